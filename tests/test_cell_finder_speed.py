"""The finder's one-pass helpers give exactly what the per-label passes they replaced gave
(the cells found must not change when the finder gets faster)."""
import numpy as np

from core.cells.finder import _channel_sum, _label_pixels


def test_label_pixels_are_nonzero_of_each_label_in_the_same_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (40, 57)).astype(np.int32)
    labels[labels == 4] = 0  # a label with no pixels gives empty arrays
    pixels = _label_pixels(labels, 5)
    assert len(pixels) == 6
    for i in range(1, 6):
        ys, xs = np.nonzero(labels == i)
        assert np.array_equal(pixels[i][0], ys) and np.array_equal(pixels[i][1], xs)


def test_channel_sum_is_the_sum_over_the_channels():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (31, 29, 3)).astype(np.uint8)
    assert np.array_equal(_channel_sum(img), img.sum(axis=2))
    assert np.array_equal(_channel_sum(img) / 3, img.mean(axis=2))
    diff = np.abs(img.astype(np.int16) - np.array([200, 180, 190], np.int16))
    assert np.array_equal(_channel_sum(diff), diff.sum(axis=2))
