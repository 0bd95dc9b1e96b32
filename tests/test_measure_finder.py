"""bench/measure_finder.py's matching: the boxes it lists as not found (--misses)."""
from __future__ import annotations

from bench.measure_finder import greedy_match, unmatched


def test_a_found_cell_is_matched_to_one_box_only():
    truth = [(0, 0, 10, 10), (1, 0, 11, 10), (50, 50, 60, 60)]
    found = [(0, 0, 10, 10)]
    assert greedy_match(truth, found) == 1
    assert unmatched(truth, found) == [1, 2]


def test_a_box_is_found_from_iou_one_half():
    truth = [(0, 0, 10, 10)]
    assert unmatched(truth, [(0, 0, 10, 20)]) == []  # IoU 0.5 exactly counts as found
    assert unmatched(truth, [(0, 0, 10, 21)]) == [0]  # 100 / 210
