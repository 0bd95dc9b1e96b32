"""Learning-curve experiment: does retraining from a reviewer's corrections help, and
does reviewing the least-confident images first beat reviewing in random order?

Runs the real system end to end: the share is scanned into a fresh hemascan database,
an initial model is trained (``trainer.retrain.retrain``, from scratch) on a small part
of it, then for each strategy, in rounds: the active model predicts the unreviewed pool,
a simulated reviewer labels ``--batch`` images (folder names are the reviewer's answers;
the model's mistakes among them are the corrections) as human label events, the model is
fine-tuned with ``retrain`` (fixed train/validation sides, comparison, new registered
version) and promoted, and its accuracy is measured on a held-out pseudo-patient block
(the last 20% of every class's file numbering, duplicates moved with
``trainer.data.patient_split``) that is never reviewed.

    python -m trainer.experiments.active_learning --data ../shared/datasets/all-taleqani \
        --out docs/retrain --rounds 8 --batch 50 --seed 0

Writes ``results.json``, ``table.md`` and ``learning_curve.png`` under ``--out``.
Needs matplotlib for the PNG (``pip install 'hemascan[experiments]'``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from core.models.package import load_model
from core.config import resolve_paths
from core.storage import Database
from core.jobs import run_job
from core.review.labels import record_labels
from core.models.package import read_card
from core.models.registry import active_version
from core.imaging.scan import scan
from trainer.data import compute_hashes, patient_split, scan_class_folders
from trainer.retrain import Item, RetrainConfig, load_items, promote, retrain
from core.storage import Image
from core.imaging.preprocessing import Preprocessing


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _predict(package: Path, x: np.ndarray, threads: int | None) -> np.ndarray:
    from ..engine import predict_logits  # heavy: imports scikit-learn, torch
    from ..metrics import softmax  # heavy: imports scikit-learn, torch

    model, card = load_model(package, "cpu")
    return softmax(predict_logits(model, x, card.prep, "cpu"), float(card.temperature or 1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "datasets" / "all-taleqani"))
    ap.add_argument("--out", default="docs/retrain")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--arch", default="se_cnn")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--initial", type=int, default=200, help="images the initial model is trained on")
    ap.add_argument("--initial-epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=50, help="images reviewed per round")
    ap.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per round")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--augment-strength", type=float, default=1.0, help="training augmentation (1 = the system default)")
    ap.add_argument("--strategies", default="least_confident,random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch


    from ..metrics import classification_metrics  # heavy: imports scikit-learn, torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hemascan-al-"))
    data = Path(args.data).resolve()

    # -- the held-out pseudo-patient block and the pool
    ds = compute_hashes(scan_class_folders(data))
    split = patient_split(ds, fold=4)
    classes = ds.classes
    rng = np.random.default_rng(args.seed)
    not_test = np.sort(np.concatenate([split.train, split.val]))
    initial = np.sort(rng.choice(not_test, size=args.initial, replace=False))
    pool0 = np.setdiff1d(not_test, initial)
    _log(f"{len(ds)} images: held-out block {len(split.test)}, initial {len(initial)}, pool {len(pool0)}")

    # -- database with the share scanned, initial labels, initial model (reused from --work if there)
    from sqlalchemy import select


    base_dir = work / "base"
    reuse = (base_dir / "models" / "initial").is_dir()
    paths = resolve_paths(base_dir).ensure()
    db = Database(paths.db_url())
    if not reuse:
        run_job(scan(db, data))
    with db.session() as s:
        id_by_sha = dict(s.execute(select(Image.sha256, Image.id)).all())
    image_id = np.array([id_by_sha.get(sha, -1) for sha in ds.sha256])  # byte-identical copies are one image
    assert (image_id >= 0).all(), "scan did not record every image"

    def review(dbx, idx):
        with dbx.session() as s:
            for i in idx:
                record_labels(s, [int(image_id[i])], classes[int(ds.labels[i])], "simulated-reviewer", source="human")

    cache: dict = {}
    prep = Preprocessing(input_size=args.input_size, interpolation="area", corner_mask=(0.1, 0.2))
    items = [Item(str(p), int(ds.labels[k]), ds.sha256[k], None) for k, p in enumerate(ds.paths)]
    x_all = load_items(items, prep, cache, workers=args.threads)
    _log(f"decoded {len(x_all)} images at {args.input_size} px")
    t0 = time.perf_counter()
    if reuse:
        init_card = read_card(base_dir / "models" / "initial")
        init = {"data": {"n_train": init_card.training_data["n_train"], "n_val": init_card.training_data["n_val"]}}
        _log("reusing the initial model in " + str(base_dir))
    else:
        review(db, initial)
        init = run_job(retrain(db, paths, RetrainConfig(epochs=args.initial_epochs, arch=args.arch, from_scratch=True,
                                                        input_size=args.input_size, lr=2e-3, seed=args.seed,
                                                        augment={"strength": args.augment_strength},
                                                        threads=args.threads, name="initial", bootstrap=500),
                               image_cache=cache))
        promote(db, "initial")
    init_seconds = time.perf_counter() - t0
    db.dispose()
    test_idx = split.test
    y_test = ds.labels[test_idx]

    def test_metrics(pkg: Path) -> dict:
        p = _predict(pkg, x_all[test_idx], args.threads)
        m = classification_metrics(y_test, p, classes)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    m0 = test_metrics(paths.models / "initial")
    _log(f"initial model: {init['data']['n_train']} train / {init['data']['n_val']} val, {init_seconds:.0f} s, "
         f"held-out accuracy {m0['accuracy']:.3f}")

    results = {"config": vars(args), "n_images": len(ds), "n_test": int(len(test_idx)), "n_initial": int(len(initial)),
               "initial": {**m0, "seconds": init_seconds, "n_train": init["data"]["n_train"], "n_val": init["data"]["n_val"]},
               "strategies": {}}
    # strategies advance round by round, side by side, so a stopped run still compares them
    state = {}
    for strategy in args.strategies.split(","):
        if strategy not in ("least_confident", "random"):
            raise SystemExit(f"unknown strategy {strategy}")
        sdir = work / strategy
        shutil.rmtree(sdir, ignore_errors=True)
        shutil.copytree(base_dir, sdir)
        sp = resolve_paths(sdir).ensure()
        state[strategy] = {"paths": sp, "db": Database(sp.db_url()), "rng": np.random.default_rng(args.seed + 1),
                           "pool": pool0.copy(), "reviewed": 0, "corrections": 0}
        results["strategies"][strategy] = [{"round": 0, "reviewed": 0, "corrections": 0, **m0, "seconds": 0.0}]
    for rnd in range(1, args.rounds + 1):
        for strategy, st in state.items():
            tr0 = time.perf_counter()
            sdb, sp, pool = st["db"], st["paths"], st["pool"]
            with sdb.session() as s:
                pkg = Path(active_version(s).path)
            probs = _predict(pkg, x_all[pool], args.threads)
            if strategy == "least_confident":
                pick = np.argsort(probs.max(1), kind="stable")[: args.batch]
            else:
                pick = st["rng"].choice(len(pool), size=min(args.batch, len(pool)), replace=False)
            chosen = pool[pick]
            wrong = int((probs[pick].argmax(1) != ds.labels[chosen]).sum())
            review(sdb, chosen)
            st["pool"] = np.setdiff1d(pool, chosen)
            st["reviewed"] += len(chosen)
            st["corrections"] += wrong
            r = run_job(retrain(sdb, sp, RetrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed + rnd,
                                                       augment={"strength": args.augment_strength},
                                                       threads=args.threads, bootstrap=500), image_cache=cache))
            promote(sdb, r["version"])
            m = test_metrics(Path(r["package"]))
            dt = time.perf_counter() - tr0
            results["strategies"][strategy].append(
                {"round": rnd, "reviewed": st["reviewed"], "corrections": st["corrections"], **m, "seconds": dt,
                 "n_train": r["data"]["n_train"], "n_val": r["data"]["n_val"], "train_seconds": r["train_seconds"],
                 "val_difference": r["comparison"]["accuracy_difference"]["difference"] if r.get("comparison") else None})
            _log(f"{strategy} round {rnd}: reviewed {st['reviewed']} ({wrong} of {len(chosen)} were mistakes), train "
                 f"{r['data']['n_train']} / val {r['data']['n_val']}, held-out acc {m['accuracy']:.3f} "
                 f"F1 {m['macro_f1']:.3f}, {dt:.0f} s")
            results["seconds"] = time.perf_counter() - t_start
            _write(out, results)
            _plot(out, results)
    for st in state.values():
        st["db"].dispose()
    results["seconds"] = time.perf_counter() - t_start
    _write(out, results)
    _plot(out, results)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    _log(f"done in {results['seconds'] / 60:.1f} min; wrote {out}")
    return 0


def _write(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    strategies = list(results["strategies"])
    lines = ["| round | reviewed | " + " | ".join(f"{s}: corrections | {s}: held-out acc | {s}: macro-F1" for s in strategies) + " |",
             "|---|---|" + "---|---|---|" * len(strategies)]
    n = max(len(r) for r in results["strategies"].values())
    for k in range(n):
        cells = []
        reviewed = ""
        for s in strategies:
            rows = results["strategies"][s]
            if k < len(rows):
                r = rows[k]
                reviewed = r["reviewed"]
                cells += [str(r["corrections"]), f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}"]
            else:
                cells += ["", "", ""]
        lines.append(f"| {k} | {reviewed} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(out: Path, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install 'hemascan[experiments]')")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for s, rows in results["strategies"].items():
        ax.plot([r["reviewed"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=s.replace("_", " "))
    ax.set_xlabel("images reviewed (in rounds), on top of the initial training set")
    ax.set_ylabel("held-out pseudo-patient accuracy")
    ax.set_title(f"Retraining after each round ({results['config']['arch']}, {results['config']['input_size']} px)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
