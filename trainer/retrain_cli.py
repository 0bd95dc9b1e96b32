"""``hemascan retrain`` (entry point ``hemascan.commands: retrain``). The ``models``
actions it produces versions for (export, import, rollback, lineage, runs) are core's."""
from __future__ import annotations

import argparse

from core.app.command import App, command
from core.app.options import MODEL_NAME, existing_folder, int_range, non_empty_path, positive_float

from .cli import BATCH_SIZE, EPOCHS, INPUT_SIZE, LEARNING_RATE, SEED, THREADS
from core.errors import HemascanError
from trainer.retrain import RetrainConfig, comparison_table, promote, promotion_advice, retrain
from core.app.commands import cmd_classify

VAL_FRACTION = positive_float(0.5)


def _retrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=EPOCHS, default=4, help="epochs at least (few images get more: --min-steps)")
    p.add_argument("--min-steps", type=int_range(0, 1_000_000), default=60, help="optimiser steps at least, however few images are reviewed")
    p.add_argument("--replay", default="auto", choices=["auto", "on", "off"],
                   help="refit only the classifier on your images plus embeddings replayed from the active model's "
                        "guard (auto: under 200 reviewed images, or a class with too few; docs/retrain.md)")
    p.add_argument("--train-last", default="8", help="fine-tuning trains the last N stages of the network "
                   "(head first), or 'all' (default 8)")
    p.add_argument("--arch", help="architecture (default: the active model's; another one needs --from-scratch)")
    p.add_argument("--from-scratch", action="store_true", help="do not start from the active model's weights")
    p.add_argument("--input-size", type=INPUT_SIZE, help="input size in pixels (--from-scratch only)")
    p.add_argument("--base-data", metavar="FOLDER", type=existing_folder, help="also train on this folder of class folders")
    p.add_argument("--include-imported", action="store_true",
                   help="also use labels from import-labels (source dataset/import), not only human review")
    p.add_argument("--val-fraction", type=VAL_FRACTION, default=0.2,
                   help="share of newly reviewed images put on the validation side (over 0, at most 0.5)")
    p.add_argument("--lr", type=LEARNING_RATE, help="learning rate (default: the parent model's)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32, help="items per training step (default 32)")
    p.add_argument("--freeze-blocks", type=int_range(0, 100), help="effnet_lite0: keep the first N blocks fixed (faster; default: as the active model was trained)")
    p.add_argument("--no-augment", action="store_true", help="train on the reviewed items as they are")
    p.add_argument("--folds", type=int_range(0, 20), default=5,
                   help="compare with the active version also on every reviewed training image, each predicted by "
                        "a version fitted without it in N folds (0: on the validation images only)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when there is one), cpu or cuda")
    p.add_argument("--threads", type=THREADS, help="CPU threads (default: the runtime plan's)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed")
    p.add_argument("--name", type=MODEL_NAME, help="name of the new version")
    p.add_argument("--promote", action="store_true", help="make the new version active when training finishes, "
                   "if the comparison shows it is better")
    p.add_argument("--force", action="store_true", help="with --promote: promote even when the comparison cannot "
                   "tell the versions apart or shows the new one worse")
    p.add_argument("--reclassify", metavar="FOLDER", type=non_empty_path, help="with --promote: classify FOLDER with the new version")
    p.add_argument("--show-changed", type=int_range(0, 1_000_000), default=20, help="list up to N validation images whose prediction changes")


HISTORY_FIGURES = (("train_loss", "train loss"), ("train_accuracy", "acc"), ("val_loss", "| val loss"),
                   ("val_accuracy", "acc"), ("val_macro_f1", "F1"))


@command("retrain", "fine-tune a new model version on the reviewed labels and compare it with the active one",
         _retrain_args)
def cmd_retrain(args, app: App) -> int:
    if args.train_last != "all" and not (args.train_last.isdigit() and int(args.train_last) > 0):
        raise HemascanError(f"--train-last takes a number of stages or 'all', not {args.train_last!r}")
    cfg = RetrainConfig(epochs=args.epochs, min_steps=args.min_steps, replay=args.replay,
                        train_last=None if args.train_last == "all" else int(args.train_last), arch=args.arch, from_scratch=args.from_scratch, input_size=args.input_size,
                        base_data=args.base_data, val_fraction=args.val_fraction, lr=args.lr,
                        batch_size=args.batch_size, freeze_blocks=args.freeze_blocks,
                        augment={"strength": 0.0} if args.no_augment else {}, device=args.device,
                        threads=args.threads, seed=args.seed, name=args.name, cv_folds=args.folds,
                        sources=("human", "import", "dataset") if args.include_imported else ("human",))
    out = app.progress(retrain(app.db, app.paths, cfg, cancel=app.cancel), "retrain")
    d = out["data"]
    app.echo(f"training run {out['run_id']}: {out['status']}; {d['n_train']} training images "
             f"({d['n_train_reviewed']} reviewed, {d['n_train_base']} base), {d['n_val']} validation"
             + (f", {d['n_missing_files']} reviewed images whose file is gone" if d["n_missing_files"] else ""))
    for c, n in d["per_class"].items():
        app.echo(f"  {c:<14} train {n['train']:>6}  base {n['base']:>6}  val {n['val']:>6}"
                 + ("   too few" if c in d.get("too_few", ()) else ""))
    if d.get("too_few"):
        app.echo(f"  too few reviewed images (under {d['min_per_class']}) of: {', '.join(d['too_few'])}; "
                 "the new version learns little about them: review more of them")
    for h in out.get("history", []):
        app.echo(f"  {h.get('unit', 'epoch')} {h['epoch']}: " + " ".join(  # a head refit's steps have no F1
            f"{label} {h[key]:.3f}" for key, label in HISTORY_FIGURES if h.get(key) is not None))
    if out["status"] != "completed":
        app.echo("cancelled: no model version was written")
        return 130
    app.echo(f"new version {out['version']} (parent {out['parent']}), trained in {out['train_seconds']:.1f} s on {out['device']}")
    cmp = out.get("comparison")
    if cmp:
        app.echo(comparison_table(cmp))
        for ch in cmp["changed"][: args.show_changed]:
            app.echo(f"  changed: {ch['path']}: {ch['old']} -> {ch['new']} (reviewed: {ch['label']})")
    verdict, why = promotion_advice(cmp)
    if args.promote and why and not args.force:
        import sys

        if sys.stdin.isatty() and sys.stdout.isatty():
            answer = input(f"{why[0].upper()}{why[1:]}. Promote it anyway? [y/N] ")
            args.force = answer.strip().lower() in ("y", "yes")
        if not args.force:
            app.echo(f"not promoted: {why}. Promote anyway with --force, or review more images and retrain.")
            args.promote = False
    if args.promote:
        if why:
            app.echo(f"promoted although {why} (confirmed)")
        promote(app.db, out["version"])
        app.echo(f"promoted: {out['version']} is now the active model")
        if args.reclassify:
            return cmd_classify(argparse.Namespace(folder=args.reclassify, device=args.device, model=out["version"],
                                                   batch_size=None, workers=None, engine=None,
                                                   precision="auto"), app)
    else:
        app.echo(f"not active yet: hemascan models activate {out['version']}   (roll back any time with "
                 f"hemascan models rollback NAME)")
    return 0
