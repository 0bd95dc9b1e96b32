"""Batch classification throughput: hemascan's classify path against the naive pipeline.

    python -m bench.throughput                                  # ../shared/datasets/all-taleqani
    python -m bench.throughput --folder DIR                     # any folder of class sub-folders
    python -m bench.throughput --generate 2000 --format bmp     # generated 450x450 BMPs (C-NMC format)
    python -m bench.throughput --memory 1000,20000              # peak RSS, small vs large folder

In one run, with the same model and weights, it measures:
  naive      torchvision ImageFolder + PIL + DataLoader (defaults) + the plain fp32 model
  hemascan   the `classify` job (decode pool, batches, DB writes) with its engine: on a CPU,
             OpenVINO running the package's checked int8 model (--precision fp32 for the fp32
             one); on CUDA, torch with autocast. On a folder already scanned (the scan is
             timed separately: it runs once per folder)
  decode     hemascan's decode + preprocess alone, same threads
  model      hemascan's model alone (same engine and precision) on preprocessed batches
  ceiling    CPU: decode and model share the cores, so 1 / (1/decode + 1/model);
             CUDA: they run on different hardware, so min(decode, model)
  time to first prediction: a fresh `hemascan classify` process, from spawn to first row
The last lines are `ratio: X` (hemascan / naive) and `fraction_of_ceiling: Y`.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT.parent / "shared" / "datasets" / "all-taleqani"


def list_images(folder: Path, limit: int | None) -> list[Path]:
    from core.imaging.images import SUPPORTED_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS)
    return files[:limit] if limit else files


def naive_rate(folder: Path, package: Path, limit: int | None) -> tuple[float, int]:
    """What a user would write first: ImageFolder + PIL + DataLoader + model, fp32."""
    import torch
    from torch.utils.data import DataLoader, Subset

    try:  # not a dependency of the app: the dev and bench extras install it
        from torchvision import datasets, transforms
    except ImportError as exc:
        raise SystemExit(f"the naive baseline needs torchvision ({exc}): pip install 'hemascan[bench]'") from None

    from core.models.package import load_model

    model, card = load_model(package)
    prep = card.prep
    tf = transforms.Compose([
        transforms.Resize((prep.input_size, prep.input_size)),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    if limit:
        ds = Subset(ds, range(min(limit, len(ds))))
    loader = DataLoader(ds, batch_size=32)
    n = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x).softmax(1)
            n += len(x)
    return n / (time.perf_counter() - t0), n


def hemascan_rate(folder: Path, device: str, workers: int | None, precision: str = "auto") -> dict:
    """The real classify job into a throw-away data directory."""
    from core.config import resolve_paths
    from core.storage import Database
    from core.inference.predict import classify
    from core.jobs import run_job
    from core.imaging.scan import scan

    with tempfile.TemporaryDirectory(prefix="hemascan-bench-") as tmp:
        paths = resolve_paths(tmp).ensure()
        db = Database(paths.db_url())
        t0 = time.perf_counter()
        s = run_job(scan(db, folder))
        scan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        c = run_job(classify(db, paths, folder, device=device, workers=workers, precision=precision))
        total_s = time.perf_counter() - t0
        db.dispose()
    return {"rate": c.rate, "n": c.n_predicted, "device": c.device, "scan_rate": s.n_files / scan_s,
            "classify_wall_s": total_s, "errors": c.n_errors}


def decode_rate(files: list[Path], package: Path, workers: int) -> float:
    import cv2

    from core.imaging.images import decode_rgb, read_file
    from core.models.package import read_card

    prep = read_card(package).prep
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda p: prep.apply(decode_rgb(read_file(str(p)))), files, chunksize=16):
            pass
    return len(files) / (time.perf_counter() - t0)


def model_rate(files: list[Path], package: Path, device: str, precision: str = "auto",
               seconds: float = 8.0) -> tuple[float, str, int]:
    from core.inference.predict import Predictor, select_device

    pred = Predictor(package, select_device(device), precision=precision)
    bs = pred.batch_size
    batch = np.stack([pred.load_image(str(p)) for p in (files * (bs // max(1, len(files)) + 1))[:bs]])
    for _ in range(3):
        pred.assess(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.assess(batch)  # what classify runs: probabilities and the guard's verdict
        n += bs
    return n / (time.perf_counter() - t0), f"{pred.engine_name} {pred.precision}", bs


def guard_cost(files: list[Path], package: Path, precision: str = "auto", seconds: float = 6.0) -> dict | None:
    """The foreign-image guard's cost on the CPU path, measured in one run: the package's
    OpenVINO model with its logits output only (the pipeline before the guard existed)
    against logits + embedding + the guard's distances (what classify runs now), interleaved."""
    import openvino as ov

    from core.inference.engines import with_uint8_input
    from core.inference.predict import Predictor

    pred = Predictor(package, "cpu", engine="openvino", precision=precision)
    if pred.guard is None or not pred.engine._has_embedding:
        return None
    bs = pred.batch_size
    batch = np.stack([pred.load_image(str(p)) for p in (files * (bs // max(1, len(files)) + 1))[:bs]])
    if pred.precision != "int8":
        return None
    # the same int8 IR cut to its first output, compiled exactly as the engine compiles its model
    core = ov.Core()
    src = core.read_model(str(Path(package) / "model.int8.xml"))
    src = ov.Model([src.get_results()[0]], src.get_parameters(), "logits-only")
    logits_only = core.compile_model(with_uint8_input(src, pred.prep), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": pred.engine.threads, "INFERENCE_PRECISION_HINT": "f32"})
    req = logits_only.create_infer_request()

    def before():
        req.infer({0: batch})

    def after():
        pred.assess(batch)

    rates = {"before": 0.0, "after": 0.0}
    for fn in (before, after):
        for _ in range(3):
            fn()
    for _ in range(3):  # interleaved rounds: the machine's load affects both alike
        for key, fn in (("before", before), ("after", after)):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 6:
                fn()
                n += bs
            rates[key] += n / (time.perf_counter() - t0) / 3
    return {"logits_only": rates["before"], "with_guard": rates["after"],
            "cost": 1.0 - rates["after"] / rates["before"], "precision": pred.precision}


def time_to_first_prediction(files: list[Path]) -> float:
    """Spawn `hemascan classify` on a small folder; seconds until the first prediction row."""
    with tempfile.TemporaryDirectory(prefix="hemascan-ttfp-") as tmp:
        small = Path(tmp) / "small"
        for i, p in enumerate(files[:64]):
            d = small / p.parent.name
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, d / f"{i:03d}{p.suffix}")
        data = Path(tmp) / "data"
        env = dict(os.environ, HEMASCAN_DATA_DIR=str(data), PYTHONPATH=str(ROOT))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "core", "-q", "classify", str(small)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db_path = data / "hemascan.sqlite3"
        first = None
        while first is None and proc.poll() is None:
            if db_path.exists():
                try:
                    con = sqlite3.connect(db_path, timeout=1)
                    if con.execute("SELECT 1 FROM predictions LIMIT 1").fetchone():
                        first = time.perf_counter() - t0
                    con.close()
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.01)
        if first is None:
            first = time.perf_counter() - t0
        proc.wait()
        return first


def generate_folder(n: int, fmt: str, size: int, dest: Path) -> Path:
    from core.app.sample import generate

    generate(dest, n_per_class=max(1, n // 4), seed=0, size=size, ext=f".{fmt}")
    return dest


def peak_rss_mb(folder: Path, device: str) -> float:
    """Peak RSS of a fresh `hemascan classify` process on ``folder``."""
    with tempfile.TemporaryDirectory(prefix="hemascan-mem-") as tmp:
        env = dict(os.environ, HEMASCAN_DATA_DIR=tmp, PYTHONPATH=str(ROOT))
        code = ("import resource, sys; from core.app.cli import main; rc = main(sys.argv[1:]); "
                "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, "-q", "classify", str(folder), "--device", device],
                             env=env, capture_output=True, text=True, check=True).stdout
        return int(out.split("PEAK_RSS_KB")[1].split()[0]) / 1024


def run_memory(sizes: list[int], args) -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="hemascan-memfold-") as tmp:
        for n in sizes:
            folder = generate_folder(n, args.format, args.size, Path(tmp) / f"n{n}")
            t0 = time.perf_counter()
            mb = peak_rss_mb(folder, args.device)
            results.append((n, mb))
            print(f"{n:>7} images: peak RSS {mb:7.1f} MB  ({time.perf_counter() - t0:.0f} s)", flush=True)
    (n0, m0), (n1, m1) = results[0], results[-1]
    print(f"rss_ratio: {m1 / m0:.2f}  ({n1} vs {n0} images; target <= 1.5)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="folder of class sub-folders (default: the shared ALL dataset)")
    ap.add_argument("--generate", type=int, help="generate N synthetic images instead of using --folder")
    ap.add_argument("--format", default="bmp", choices=["bmp", "jpg", "png", "tif"])
    ap.add_argument("--size", type=int, default=450, help="generated image size (450 = C-NMC)")
    ap.add_argument("--limit", type=int, help="use at most N images")
    ap.add_argument("--model", type=Path, help="model package (default: the bundled default model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="hemascan's precision: auto (int8 on a CPU where the "
                    "package has a checked one), fp32, int8, bf16, fp16")
    ap.add_argument("--workers", type=int, help="decode threads (default: as classify chooses)")
    ap.add_argument("--memory", help="comma-separated folder sizes for the peak-RSS comparison, e.g. 1000,20000")
    args = ap.parse_args(argv)

    if args.memory:
        run_memory([int(x) for x in args.memory.split(",")], args)
        return 0

    import torch

    from core.inference.predict import select_device
    from core.models.registry import bundled_default_package

    package = args.model or bundled_default_package()
    tmpdir = None
    if args.generate:
        tmpdir = tempfile.TemporaryDirectory(prefix="hemascan-gen-")
        folder = generate_folder(args.generate, args.format, args.size, Path(tmpdir.name))
    else:
        folder = args.folder or DEFAULT_FOLDER
        if not folder.is_dir():
            print(f"no folder {folder}: pass --folder or --generate N", file=sys.stderr)
            return 2
    if args.limit:  # a class-folder copy of the first N files, so every pipeline sees the same set
        tmpdir = tmpdir or tempfile.TemporaryDirectory(prefix="hemascan-lim-")
        sub = Path(tmpdir.name) / "limited"
        for p in list_images(folder, args.limit):
            (sub / p.parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(p, sub / p.parent.name / p.name)
        folder = sub
    files = list_images(folder, None)
    device = select_device(args.device)
    workers = args.workers or min(8 if device.type == "cuda" else 2, os.cpu_count() or 2)
    print(f"folder: {folder} ({len(files)} images)  model: {Path(package).name}  device: {device}  "
          f"cpu cores: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  decode threads: {workers}", flush=True)

    ttfp = time_to_first_prediction(files)
    print(f"time to first prediction (fresh process, 64 images): {ttfp:.2f} s", flush=True)
    naive, n_naive = naive_rate(folder, package, None)
    print(f"naive (ImageFolder+PIL+DataLoader, fp32): {naive:8.1f} images/s  ({n_naive} images)", flush=True)
    h = hemascan_rate(folder, args.device, args.workers, args.precision)
    print(f"hemascan classify:                        {h['rate']:8.1f} images/s  ({h['n']} images, {h['device']}; "
          f"scan beforehand {h['scan_rate']:.0f} files/s)", flush=True)
    d = decode_rate(files, package, workers)
    print(f"decode + preprocess only ({workers} threads):     {d:8.1f} images/s", flush=True)
    m, precision, bs = model_rate(files, package, args.device, args.precision)
    print(f"model only ({precision}, batch {bs}):                {m:8.1f} images/s", flush=True)
    if device.type == "cpu":
        g = guard_cost(files, package, args.precision)
        if g is not None:
            print(f"foreign-image guard (model only, {g['precision']}): logits only {g['logits_only']:.1f} images/s, "
                  f"with embedding + guard {g['with_guard']:.1f} images/s: cost {g['cost']:.1%}", flush=True)
    if device.type == "cuda":
        ceiling, how = min(d, m), "min(decode, model): separate hardware"
    else:
        ceiling, how = 1.0 / (1.0 / d + 1.0 / m), "1/(1/decode + 1/model): both share the CPU cores"
    limit = "model" if m < d else "decode"
    print(f"ceiling: {ceiling:.1f} images/s [{how}]; the slower stage is {limit}")
    print(f"hemascan: {h['rate']:.1f} images/s  naive: {naive:.1f} images/s")
    print(f"fraction_of_ceiling: {h['rate'] / ceiling:.2f}")
    print(f"ratio: {h['rate'] / naive:.2f}")
    if tmpdir:
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
