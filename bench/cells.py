"""Cell pipeline throughput: classify's cell stage against a naive pipeline, and its memory.

    python -m bench.cells                         # 300 Taleqani fields + 40 five-megapixel fields
    python -m bench.cells --share 300 --big 40 --memory 50,200

End to end, into a real SQLite file (a throw-away data directory), with the bundled white-cell
differential as the only active model (a cell model: the field model does not run, so the figures
are the cell stage's): scan, decode (libjpeg's reduced modes for big JPEGs), find, cut out,
classify (batched across fields, the engine the runtime plan picks), store.

  naive      the same steps written plainly with the same model: full-size decode (cv2.imread),
             find at full size, each cell cut out as the card says and put through the fp32
             torch model one at a time, one sqlite3 INSERT per cell, a commit per field
  hemascan   `classify` (core/inference/cells.py), in the state a workstation is in after its
             first classification: the model's OpenVINO form is cached in the data directory
             (the first classification after installing converts it once; that one-off cost is
             measured and printed apart, `first start`)

Five-megapixel fields are made by upscaling BCCD fields (640x480 -> 2592x1944, cv2 INTER_CUBIC)
and writing them as JPEG (quality 90) to a temporary folder: real stain and cells, a camera's
pixel count. Peak RSS of a fresh `classify` process on --memory N1,N2 such fields shows memory
flat in the number of fields. The last line is `cells_ratio: R` (hemascan / naive cells/s, share).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"  # beside the checkout, as for bench/throughput.py; --datasets elsewhere
# the cell model a first start makes active (issue 23's white-cell differential, fp32: no int8 yet)
CELL_MODEL = "wbc-differential-effnet-lite0-v2"
CELL_PACKAGE = "wbc-differential"  # its folder under resources/models (the naive side loads it from there)
BIG_SIZE = (2592, 1944)


def first_images(folder: Path, n: int) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"no folder {folder}: pass --datasets DIR")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    step = max(1, len(files) // n)  # spread over the classes
    return files[::step][:n]


def copy_fields(files: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(files):
        shutil.copyfile(f, dest / f"{k:05d}{f.suffix.lower()}")
    return dest


def make_big_fields(n: int, dest: Path, bccd: Path) -> Path:
    import cv2

    dest.mkdir(parents=True, exist_ok=True)
    sources = first_images(bccd, n)
    for k in range(n):
        img = cv2.imread(str(sources[k % len(sources)]), cv2.IMREAD_COLOR)
        big = cv2.resize(img, BIG_SIZE, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(dest / f"big_{k:05d}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return dest


def cell_model_only(data_dir: Path):
    """A data directory with the bundled cell model (the differential) as the only active model."""
    from sqlalchemy import update

    from core.app.bootstrap import open_database
    from core.config import resolve_paths
    from core.storage import ModelVersion

    paths = resolve_paths(data_dir).ensure()
    db = open_database(paths)
    with db.session() as s:
        s.execute(update(ModelVersion).values(is_active=False))
        s.execute(update(ModelVersion).where(ModelVersion.name == CELL_MODEL).values(input_kind="cell", is_active=True))
    return db, paths


def warm_up(db, paths, warm_folder: Path) -> float:
    """Classify a few other fields once, as a workstation has before its day's work: the model's
    converted form is then in the data directory's cache. Returns that first run's seconds."""
    from core.inference.predict import classify
    from core.jobs import run_job

    t0 = time.perf_counter()
    run_job(classify(db, paths, warm_folder))
    return time.perf_counter() - t0


def hemascan(folder: Path, n_fields: int, warm_folder: Path) -> dict:
    from core.inference.predict import classify
    from core.jobs import run_job

    with tempfile.TemporaryDirectory(prefix="hemascan-bench-cells-") as tmp:
        db, paths = cell_model_only(Path(tmp))
        first = warm_up(db, paths, warm_folder)
        t0 = time.perf_counter()
        s = run_job(classify(db, paths, folder))
        wall = time.perf_counter() - t0
        db.dispose()
    assert s.n_predicted + s.n_errors == n_fields, (s.n_predicted, s.n_errors)
    return {"fields_s": n_fields / wall, "cells_s": s.n_cells_classified / wall, "cells": s.n_cells_classified,
            "stage_cells_s": s.n_cells_classified / s.seconds if s.seconds else 0.0, "device": s.device,
            "errors": s.n_errors, "first_start_s": first}


def naive(folder: Path, n_fields: int) -> dict:
    import cv2
    import numpy as np
    import torch

    from core.cells.cutout import cut_out_for_model
    from core.cells.finder import find_cells
    from core.models.package import DEFAULT_CELL_SIDE_UM, load_model, resources_dir

    model, card = load_model(resources_dir() / "models" / CELL_PACKAGE)
    prep = card.prep
    files = sorted(folder.iterdir())
    with tempfile.TemporaryDirectory(prefix="hemascan-bench-naive-") as tmp:
        con = sqlite3.connect(Path(tmp) / "naive.sqlite3")
        con.execute("CREATE TABLE cells (field TEXT, n INT, x0 INT, y0 INT, x1 INT, y1 INT, label TEXT, p REAL)")
        n_cells = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for f in files:
                rgb = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                found = find_cells(rgb)
                for k, cell in enumerate(found.cells):
                    crop = cut_out_for_model(rgb, cell, found.um_per_px, prep=prep, out_px=prep.input_size,
                                             side_um=card.cell_side_um or DEFAULT_CELL_SIDE_UM)
                    x = prep.normalise(torch.from_numpy(np.ascontiguousarray(prep.apply(crop))[None]))
                    p = torch.softmax(model(x) / card.temperature, 1)[0]
                    i = int(p.argmax())
                    con.execute("INSERT INTO cells VALUES (?,?,?,?,?,?,?,?)",
                                (f.name, k, *map(int, cell.box), card.classes[i], float(p[i])))
                    n_cells += 1
                con.commit()
        wall = time.perf_counter() - t0
        con.close()
    return {"fields_s": n_fields / wall, "cells_s": n_cells / wall, "cells": n_cells}


def peak_rss_mb(folder: Path) -> float:
    """Peak RSS of a fresh process running the classify job on ``folder``."""
    code = ("import resource, sys, tempfile; from pathlib import Path; from bench.cells import cell_model_only; "
            "from core.inference.predict import classify; from core.jobs import run_job; "
            "tmp = tempfile.mkdtemp(); db, paths = cell_model_only(Path(tmp)); "
            "run_job(classify(db, paths, sys.argv[1])); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if run.returncode != 0:
        raise SystemExit(f"the memory run on {folder} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    out = run.stdout
    return int(out.split("PEAK_RSS_KB")[-1].split()[0]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--share", type=int, default=300, help="Taleqani fields (0: skip)")
    ap.add_argument("--big", type=int, default=40, help="five-megapixel fields (0: skip)")
    ap.add_argument("--memory", default="50,200", help="N1,N2 five-megapixel fields for peak RSS ('': skip)")
    ap.add_argument("--datasets", type=Path, default=DATASETS, help="folder holding all-taleqani and bccd-boxes")
    args = ap.parse_args(argv)
    bccd = args.datasets / "bccd-boxes" / "images"
    print(f"cpus: {os.cpu_count()} (shared machine: figures are noisy)", flush=True)
    ratio = None
    with tempfile.TemporaryDirectory(prefix="hemascan-bench-fields-") as tmp:
        tmp = Path(tmp)
        warm = copy_fields(first_images(bccd, 3), tmp / "warm")  # not in either measured folder
        if args.share:
            folder = copy_fields(first_images(args.datasets / "all-taleqani", args.share), tmp / "share")
            h = hemascan(folder, args.share, warm)
            n = naive(folder, args.share)
            ratio = h["cells_s"] / n["cells_s"]
            print(f"share ({args.share} Taleqani fields, {h['cells']} cells, {h['device']}):", flush=True)
            print(f"  hemascan: {h['fields_s']:6.1f} fields/s {h['cells_s']:7.1f} cells/s end to end "
                  f"(scan included; cell stage alone {h['stage_cells_s']:.1f} cells/s)")
            print(f"  naive:    {n['fields_s']:6.1f} fields/s {n['cells_s']:7.1f} cells/s ({n['cells']} cells)")
            print(f"  first start (3 other fields, converting the model once, then cached): "
                  f"{h['first_start_s']:.1f} s", flush=True)
        if args.big:
            folder = make_big_fields(args.big, tmp / "big", bccd)
            h = hemascan(folder, args.big, warm)
            n = naive(folder, args.big)
            print(f"five-megapixel ({args.big} BCCD fields upscaled to {BIG_SIZE[0]}x{BIG_SIZE[1]}, JPEG; "
                  f"{h['cells']} cells):")
            print(f"  hemascan: {h['fields_s']:6.2f} fields/s {h['cells_s']:7.1f} cells/s end to end")
            print(f"  naive:    {n['fields_s']:6.2f} fields/s {n['cells_s']:7.1f} cells/s", flush=True)
            print(f"big_fields_ratio: {h['fields_s'] / n['fields_s']:.2f}")
        if args.memory:
            sizes = [int(x) for x in args.memory.split(",")]
            rss = []
            for size in sizes:
                folder = make_big_fields(size, tmp / f"mem{size}", bccd)
                rss.append(peak_rss_mb(folder))
                print(f"  {size:>5} five-megapixel fields: peak RSS {rss[-1]:7.1f} MB", flush=True)
                shutil.rmtree(folder)
            print(f"rss_ratio: {rss[-1] / rss[0]:.2f} ({sizes[-1]} vs {sizes[0]} fields)")
    if ratio is not None:
        print(f"cells_ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
