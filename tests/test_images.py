import numpy as np
import pytest

from core.errors import ImageError
from core.imaging.images import decode_rgb, probe
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


def test_read_and_hash_reads_once_and_refuses_big_files_from_the_stat(tmp_path, monkeypatch):
    import hashlib

    from core.imaging.images import format_bytes, read_and_hash, read_file

    p = tmp_path / "a.jpg"
    p.write_bytes(jpeg_bytes(size=64))
    c = read_and_hash(str(p))
    assert c.data == p.read_bytes() and c.sha256 == hashlib.sha256(c.data).hexdigest()
    assert (c.size, c.mtime_ns) == (p.stat().st_size, p.stat().st_mtime_ns)
    with pytest.raises(ImageError, match=r"over the 100 bytes limit for one image"):
        read_and_hash(str(p), max_bytes=100)
    with pytest.raises(ImageError, match=r"over the 100 bytes limit"):
        read_file(str(p), max_bytes=100)
    assert format_bytes(2 * 1024**3) == "2.0 GiB" and format_bytes(256 * 1024**2) == "256 MiB"
    assert format_bytes(1536 * 1024) == "1.5 MiB" and format_bytes(150582) == "147 KiB"
    # a bad HEMASCAN_MAX_FILE_MB is refused at start: tests/test_settings.py
    with pytest.raises(ImageError, match="disappeared"):
        read_and_hash(str(tmp_path / "missing.jpg"))
