"""Time to fine-tune the active model on N reviewed images (the issue's target: 1,000
images in under 5 minutes on a 2-core CPU), through the real ``retrain`` job.

    python -m trainer.experiments.finetune_time --data ../shared/datasets/all-taleqani \
        --n 1000 --epochs 3 [--package resources/models/default] [--arch effnet_lite0]

The share is scanned into a temporary database, N images (seeded, from outside the
pseudo-patient test block) get human labels (their folder), and the model is
fine-tuned. Without ``--package`` (or when the package is an untrained placeholder), an
``--arch`` model with ImageNet weights where available stands in for the active model:
the timing does not depend on the weights. Prints and writes JSON with the stages' times.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from core.config import resolve_paths
from core.storage import Database, Image
from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import ModelCard, read_card, save_package
from core.models.registry import bundled_default_package, register_package
from core.imaging.scan import scan
from trainer.data import compute_hashes, patient_split, scan_class_folders
from trainer.pipeline import new_model
from trainer.retrain import RetrainConfig, retrain
from core.inference.runtime import probe_host


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "datasets" / "all-taleqani"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--package", help="model package to fine-tune (default: the bundled default model)")
    ap.add_argument("--arch", default="effnet_lite0", help="stand-in when the package is a placeholder")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--freeze-blocks", type=int, help="default: as the active model was trained")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args(argv)

    import torch

    from sqlalchemy import select

    from ..engine import TrainConfig  # heavy: imports scikit-learn, torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hemascan-ft-"))
    try:
        paths = resolve_paths(work).ensure()
        db = Database(paths.db_url())
        data = Path(args.data).resolve()
        t = time.perf_counter()
        ds = compute_hashes(scan_class_folders(data))
        split = patient_split(ds, fold=4)
        run_job(scan(db, data))
        t_scan = time.perf_counter() - t
        pool = np.sort(np.concatenate([split.train, split.val]))
        chosen = np.random.default_rng(args.seed).choice(pool, size=min(args.n, len(pool)), replace=False)
        with db.session() as s:
            id_by_sha = dict(s.execute(select(Image.sha256, Image.id)).all())
            for k in chosen:
                record_labels(s, [id_by_sha[ds.sha256[k]]], ds.classes[int(ds.labels[k])], "timing", source="human")
        pkg = Path(args.package) if args.package else bundled_default_package()
        card = read_card(pkg)
        if card.placeholder:
            tc = TrainConfig(data="", arch=args.arch, input_size=args.input_size)
            model = new_model(args.arch, len(ds.classes))
            card = ModelCard(name=f"timing-{args.arch}", architecture=args.arch, taxonomy=ds.taxonomy,
                             classes=list(ds.classes), preprocessing=tc.prep.to_dict(),
                             notes="stand-in for timing (ImageNet backbone, untrained head)")
            pkg = work / "standin"
            save_package(pkg, model.state_dict(), card)
        with db.session() as s:
            register_package(s, paths, pkg, activate=True)
        t = time.perf_counter()
        out = run_job(retrain(db, paths, RetrainConfig(epochs=args.epochs, threads=args.threads, seed=args.seed,
                                                       freeze_blocks=args.freeze_blocks, batch_size=args.batch_size,
                                                       bootstrap=1000)))
        total = time.perf_counter() - t
        hist = out["history"]
        res = {"n_reviewed": int(len(chosen)), "n_train": out["data"]["n_train"], "n_val": out["data"]["n_val"],
               "architecture": card.architecture, "input_size": card.prep.input_size, "epochs": args.epochs,
               "freeze_blocks": args.freeze_blocks, "threads": args.threads,
               "retrain_total_seconds": round(total, 1), "train_seconds": round(out["train_seconds"], 1),
               "train_images_per_s": [round(h["train_images_per_s"], 1) for h in hist],
               "scan_seconds": round(t_scan, 1), "load_average_1min_at_end": os.getloadavg()[0],
               "cpu": _cpu_name(), "status": out["status"]}
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1), encoding="utf-8")
        db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_name() -> str:
    return probe_host(include_cuda=False).cpu_name


if __name__ == "__main__":
    raise SystemExit(main())
