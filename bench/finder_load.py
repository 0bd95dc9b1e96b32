"""How long the cell finder takes on a crowded field (500 white cells) against a 224 px field:
a measurement, printed, never asserted (issue 22's bad input: "a field with 500 cells").

    python -m bench.finder_load [--repeat 3]

Both fields are synthetic (core/cells/synthetic.py): the crowded one is 500 white cells 16 um
apart at 0.25 um/px (1840 x 1280 px) with red cells beside them; the small one is the tests'
standard field (100 x 75 um, 5 white cells) reduced to 224 x 168 px. The time is the best of
--repeat runs of find_cells (no decode), one thread (cv2.setNumThreads(1), as classify's pool).
"""
from __future__ import annotations

import argparse
import time

import cv2

from core.cells import synthetic as syn
from core.cells.finder import find_cells


def best_time(rgb, repeat: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = len(find_cells(rgb).cells)
        times.append(time.perf_counter() - t0)
    return min(times), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    small = cv2.resize(syn.draw(syn.standard_field(), 0.125), (224, 168), interpolation=cv2.INTER_AREA)
    for name, rgb in (("224 px field", small), ("500-cell field", syn.crowded_field(500))):
        find_cells(rgb)  # warm-up
        dt, n = best_time(rgb, args.repeat)
        print(f"{name:<15} {rgb.shape[1]}x{rgb.shape[0]} px: {n} cells in {dt * 1000:.0f} ms "
              f"({dt * 1000 / max(n, 1):.1f} ms per cell)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
