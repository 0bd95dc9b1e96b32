"""Classify workers and label writers against one PostgreSQL server (issue 15.6).

    python -m bench.workers                       # 400 images of ../shared/datasets/all-taleqani
    python -m bench.workers --images 400 --workers 1,2,4 --writers 4 --events 500
    python -m bench.workers --synthetic           # generated sample images instead

It starts a throw-away PostgreSQL server (tests/pgserver.py: the pgserver wheel's binaries, else the machine's)
in a temporary folder, and measures:

  workers   for each N: a new database, ``hemascan submit FOLDER``, then N ``hemascan worker
            --once`` processes started together on the queue. images/s = images / wall time
            from spawning the workers to the last one exiting (process start-up and model load
            included, as a lab would see it), and the steady rate from the workers' own
            clocks; the database's share = time each worker spent in database calls
            (claiming, reading its claim, writing predictions and status, commits included)
            / its total time, summed over the workers.
  classify  the same images by one ``hemascan classify`` process (no queue), for comparison.
  labels    W processes, each a LabelWriter (core/review/labels.py, the desktop's review keys)
            writing one label event per call on random images of the folder, all at once:
            events/s over the wall time, and the latency of each call until the event is
            committed (p50, p99, max).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT.parent / "shared" / "datasets" / "all-taleqani"
WORKER_LINE = re.compile(r"worker \S+: (\d+) predicted, (\d+) failed, in (\d+) claims, ([\d.]+) s "
                         r"\(([\d.]+) images/s; database ([\d.]+) s")


def prepare_folder(dest: Path, source: Path | None, n: int) -> str:
    """``n`` images, the same number from every class folder of ``source`` (copied), or
    generated sample images when ``source`` is None."""
    if source is None:
        from core.app.sample import generate

        generate(dest, n_per_class=max(1, n // 4), seed=7)
        return f"{sum(1 for p in dest.rglob('*') if p.is_file())} synthetic sample images (core/app/sample.py)"
    classes = sorted(d for d in source.iterdir() if d.is_dir())
    per = max(1, n // len(classes))
    for c in classes:
        (dest / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:per]:
            shutil.copyfile(f, dest / c.name / f.name)
    return f"{per * len(classes)} real images of {source.name} ({per} per class folder)"


def hemascan(env: dict, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "core", "-q", *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"hemascan {' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return proc


def env_for(data_dir: Path, url) -> dict:
    return dict(os.environ, HEMASCAN_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT),
                HEMASCAN_DB_URL=url.render_as_string(hide_password=False))


def run_workers(server, data_dir: Path, folder: Path, n: int, claim: int) -> dict:
    url = server.create_database()
    env = env_for(data_dir, url)
    hemascan(env, "submit", folder)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "core", "-q", "worker", "--once", "--device", "cpu",
                               "--claim", str(claim), "--name", f"w{i}"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - t0
    predicted = seconds = db_seconds = 0.0
    for p, (out, err) in zip(procs, outs):
        m = WORKER_LINE.search(out)
        if p.returncode or not m:
            raise SystemExit(f"a worker failed ({p.returncode}): {err[-800:]}")
        predicted += int(m.group(1))
        seconds += float(m.group(4))
        db_seconds += float(m.group(6))
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        once = conn.execute(text("SELECT count(*), count(DISTINCT image_id) FROM predictions")).one()
        attempts = conn.execute(text("SELECT max(attempts) FROM work_items")).scalar()
    engine.dispose()
    return dict(n=n, predicted=int(predicted), wall=wall, rate=predicted / wall,
                steady=predicted / (seconds / n), db_share=db_seconds / seconds,
                exactly_once=once[0] == once[1] == predicted and attempts == 1)


def run_classify(server, data_dir: Path, folder: Path) -> dict:
    """The same images by one ``hemascan classify`` (no queue), on a folder already scanned."""
    url = server.create_database()
    env = env_for(data_dir, url)
    hemascan(env, "scan", folder)
    t0 = time.perf_counter()
    out = hemascan(env, "classify", folder, "--device", "cpu").stdout
    wall = time.perf_counter() - t0
    m = re.search(r"(\d+) predicted, \d+ failed, \d+ left in ([\d.]+) s", out)
    return dict(predicted=int(m.group(1)), wall=wall, rate=int(m.group(1)) / wall,
                steady=int(m.group(1)) / float(m.group(2)))


def _writer(args) -> list[float]:
    url_str, image_ids, n_events, seed, start_at = args
    from core.storage import Database
    from core.review.labels import LabelWriter
    from core.models.taxonomy import review_labels

    rng = random.Random(seed)
    labels = [lb for lb in review_labels("all_subtype")]
    db = Database(url_str, migrate=False)
    writer = LabelWriter(db)
    latencies = []
    while time.time() < start_at:  # all writers start together
        time.sleep(0.001)
    for _ in range(n_events):
        t0 = time.perf_counter()
        if not writer.write({rng.choice(image_ids): rng.choice(labels)}, f"reviewer-{seed}"):
            writer.flush(60)  # queued (database busy): latency until it is committed
        latencies.append(time.perf_counter() - t0)
    writer.close()
    db.dispose()
    return latencies


def run_writers(server, data_dir: Path, folder: Path, n_writers: int, n_events: int) -> dict:
    url = server.create_database()
    env = env_for(data_dir, url)
    hemascan(env, "scan", folder)
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM images"))]
    engine.dispose()
    start_at = time.time() + 3.0
    url_str = url.render_as_string(hide_password=False)
    with mp.get_context("spawn").Pool(n_writers) as pool:
        t0 = time.time()
        results = pool.map(_writer, [(url_str, ids, n_events, i, start_at) for i in range(n_writers)])
    wall = time.time() - max(t0, start_at)
    lat = sorted(x for r in results for x in r)
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM label_events")).scalar()
    engine.dispose()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000  # noqa: E731
    return dict(writers=n_writers, events=len(lat), stored=stored, wall=wall, rate=len(lat) / wall,
                p50=q(0.50), p99=q(0.99), max=lat[-1] * 1000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--synthetic", action="store_true", help="generated sample images, not --folder")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--claim", type=int, default=128, help="images per claim (hemascan worker's default: 128)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--events", type=int, default=500, help="label events per writer")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests import pgserver

    tmp = Path(tempfile.mkdtemp(prefix="hemascan-bench-workers-"))
    try:
        server = pgserver.start()
        pgserver.wait_ready(server.url())
    except RuntimeError as exc:
        print(f"no PostgreSQL server: {exc}", file=sys.stderr)
        return 1
    try:
        source = None if args.synthetic or not args.folder.is_dir() else args.folder
        folder = tmp / "images"
        what = prepare_folder(folder, source, args.images)
        version = subprocess.run([str(server.bindir / "postgres"), "--version"], capture_output=True,
                                 text=True).stdout.strip()
        print(f"images: {what}; server: {version} (fsync off, local TCP); cores: {os.cpu_count()}")
        data_dir = tmp / "data"
        # warm-up (not reported): registers the bundled model, fills OpenVINO's cache
        run_workers(server, data_dir, folder, 1, args.claim)
        print("| workers | images | wall s | images/s (wall) | images/s (workers' clocks) | DB share | once |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        r = run_classify(server, data_dir, folder)
        print(f"| classify (no queue) | {r['predicted']} | {r['wall']:.1f} | {r['rate']:.1f} | {r['steady']:.1f} | | |",
              flush=True)
        for n in [int(x) for x in args.workers.split(",")]:
            r = run_workers(server, data_dir, folder, n, args.claim)
            print(f"| {n} | {r['predicted']} | {r['wall']:.1f} | {r['rate']:.1f} | {r['steady']:.1f} | "
                  f"{100 * r['db_share']:.1f}% | {'yes' if r['exactly_once'] else 'NO'} |", flush=True)
        r = run_writers(server, data_dir, folder, args.writers, args.events)
        print(f"label writers: {r['writers']} processes x {args.events} events: {r['events']} events "
              f"({r['stored']} stored) in {r['wall']:.1f} s = {r['rate']:.0f} events/s; latency per event "
              f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
