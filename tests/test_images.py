import numpy as np
import pytest

from core.errors import ImageError
from core.images import decode_rgb, probe
from tests.badfiles import jpeg_bytes, png_bomb, write_awkward_folder


def test_awkward_but_valid_images_decode_to_rgb8(tmp_path):
    kinds = write_awkward_folder(tmp_path)
    for name, kind in kinds.items():
        data = (tmp_path / name).read_bytes()
        if kind == "ok":
            arr = decode_rgb(data)
            assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
            assert arr.shape[:2] == (64, 64), name
        else:
            with pytest.raises(ImageError):
                decode_rgb(data)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    write_awkward_folder(tmp_path)
    a = decode_rgb((tmp_path / "sixteen.tif").read_bytes())
    assert 30 < a.mean() < 250  # a clipped 16->8 conversion would be all 255


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello world" * 20, "not a recognised image"),
        (jpeg_bytes()[:200], "truncated"),
        (png_bomb(), "too large"),
    ],
)
def test_bad_input_messages(data, message):
    with pytest.raises(ImageError, match=message):
        decode_rgb(data)


def test_pixel_limit_is_configurable():
    data = jpeg_bytes(size=64)
    assert probe(data).width == 64
    with pytest.raises(ImageError, match="too large"):
        probe(data, max_pixels=1000)
