"""``hemascan train`` / ``evaluate`` / ``compare`` (registered through the
``hemascan.commands`` entry-point group; core does not import this module)."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from core.app.command import command
from core.app.options import MODEL_NAME, existing_folder, fraction, int_range, non_empty_path, positive_float
from core.errors import HemascanError
from core.models.registry import register_package
from core.models.runs import finish_run, start_run
from core.models.package import load_model
from trainer.data import compute_hashes, load_images, make_split, scan_as_one_class, scan_class_folders, subject_of
from core.models.store import local_package
from core.models.registry import get_version, require_active_version
from trainer.quantize import quantize_from_folder
from trainer.data import SPLIT_METHODS
from trainer.cell_crops_input import cell_crop_inputs
from core.inference.predict import Predictor

# Bounds of the training options (checked by argparse before any work: core/app/options.py).
EPOCHS = int_range(1, 10_000)
BATCH_SIZE = int_range(1, 4096)
INPUT_SIZE = int_range(32, 1024)  # the CNNs' downsampling needs 32 pixels; 1024 is far above any cell
FOLD = int_range(0, 4)  # patient: which pair of 10% chunks; subject: which of (at most) 5 groups
SEED = int_range(0, 2**32 - 1)  # numpy's seeds
THREADS = int_range(1, 1024)
LEARNING_RATE = positive_float(10.0)


def corner_mask(text: str) -> tuple[float, float] | None:
    """``none``, or the bottom-right corner's height and width as fractions: ``0.1,0.2``."""
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        mask = tuple(fraction(v) for v in parts)
    except argparse.ArgumentTypeError:
        mask = ()
    if len(mask) != 2:
        raise argparse.ArgumentTypeError(f"must be 'none' or H,W: two fractions from 0 up to 1, e.g. 0.1,0.2; not {text!r}")
    return mask


def _configure_train(p: argparse.ArgumentParser) -> None:
    # No import of core.models.architectures here: it pulls in torch, and every `hemascan` start
    # (even --help) builds this parser. The name is checked when the command runs.
    p.add_argument("--data", required=True, type=existing_folder,
                   help="folder of class folders (Benign/Early/Pre/Pro, all/hem, ...)")
    p.add_argument("--arch", default="effnet_lite0",
                   help="architecture from the registry: seed_baseline, seed_cnn3, se_cnn, effnet_lite0 (default)")
    p.add_argument("--epochs", type=EPOCHS, default=12, help="most passes over the training images (default 12)")
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32, help="images per training step (default 32)")
    p.add_argument("--lr", type=LEARNING_RATE, default=None, help="peak learning rate (default 1e-3, 3e-3 for the small CNNs)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=128,
                   help="side in pixels the images are resized to (default 128)")
    p.add_argument("--corner-mask", type=corner_mask, default=(0.1, 0.2),
                   help="blank the bottom-right corner H,W fractions (default 0.1,0.2; 'none' to keep it)")
    p.add_argument("--split", default="patient", choices=["patient", "subject", "random", "all"],
                   help="patient: pseudo-patient blocks + duplicates together (default); subject: by the subject "
                        "(patient/donor) in C-NMC file names, whole subjects held out; random: leaky image-level; "
                        "all: everything but the validation block")
    p.add_argument("--fold", type=FOLD, default=4, help="patient: which pair of 10%% chunks is the test block (0-4); "
                   "subject: which subject group of each class is the test side")
    p.add_argument("--patience", type=EPOCHS, default=4,
                   help="stop after this many passes without a better validation figure (default 4)")
    p.add_argument("--balance", default="loss", choices=["loss", "sampler", "none"],
                   help="how rare classes are weighed: in the loss (default), by sampling, or not")
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are (no flips, colour or stain changes)")
    p.add_argument("--augment", default="", metavar="KEY=VALUE,...",
                   help="augmentation options on top of the defaults (trainer/augment.py AugmentConfig), e.g. "
                        "background_p=0.5,scale=0.25,blur_p=0.3 for data from several labs")
    p.add_argument("--no-pretrained", action="store_true", help="effnet_lite0 from scratch")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (split shuffles, augmentation, weights)")
    p.add_argument("--threads", type=THREADS, default=None, help="CPU threads (default: the runtime plan's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="training arithmetic; auto is fp32 on every machine, so the model and its card do not "
                        "depend on the CPU or GPU it was trained on (evaluation and calibration are always fp32)")
    p.add_argument("--name", type=MODEL_NAME, help="model name (unique in the registry)")
    p.add_argument("--attribution", help="where the training images come from, cited in the model card "
                   "(known public sets are cited without it)")
    p.add_argument("--out", type=non_empty_path, help="run folder (checkpoints, package); default <data dir>/runs/<name>")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--activate", action="store_true", help="make the trained model the active one")
    p.add_argument("--no-register", action="store_true", help="do not add the model to the registry")
    p.add_argument("--no-int8", action="store_true", help="do not add the int8 CPU model (trainer/quantize.py)")


@command("train", "train a model on a folder of class folders", configure=_configure_train)
def train_cmd(args: argparse.Namespace, app) -> int:
    from core.models.architectures import ARCHITECTURES  # heavy: imports torch

    from .engine import TrainConfig, run  # heavy: imports scikit-learn, torch

    if args.arch not in ARCHITECTURES:
        raise HemascanError(f"unknown architecture {args.arch!r}; available: {', '.join(sorted(ARCHITECTURES))}")
    name = args.name or f"{args.arch.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out) if args.out else app.paths.data_dir / "runs" / name
    small = args.arch != "effnet_lite0"
    cfg = TrainConfig(
        data=args.data, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr or (3e-3 if small else 1e-3), input_size=args.input_size, corner_mask=args.corner_mask,
        split=args.split, fold=args.fold, patience=args.patience, balance=args.balance,
        augment={"strength": 0.0} if args.no_augment else _augment_options(args.augment),
        pretrained=not args.no_pretrained,
        seed=args.seed, threads=args.threads, name=name, attribution=args.attribution,
        out_dir=str(out), resume=args.resume,
        device=args.device, precision=args.precision, int8=not args.no_int8,
        cache_dir=str(app.paths.cache / "train-images"),
    )
    run_id = start_run(app.db, args.arch, cfg.to_dict())
    summary, error = None, None
    try:
        summary = app.progress(run(cfg, cancel=app.cancel), "train")
        if "int8" in summary:
            _echo_int8(app, summary["int8"])
        version_id = None
        if summary.get("package") and not args.no_register:
            with app.db.session() as s:
                version_id = register_package(s, app.paths, Path(summary["package"]), activate=args.activate,
                                              action="train").id
    except Exception as exc:  # recorded on the run row, then re-raised
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if error is not None or summary is None:
            finish_run(app.db, run_id, "failed", error=error or "interrupted")
        else:
            finish_run(app.db, run_id, "completed" if summary["status"] == "completed" else "cancelled",
                       metrics=_row_metrics(summary), model_version_id=version_id)
    app.echo(format_summary(summary))
    if summary["status"] != "completed":
        app.echo(f"stopped ({summary['status']}); continue with: hemascan train ... --out {out} --resume")
        return 1
    return 0


def _augment_options(text: str) -> dict:
    """'background_p=0.5,scale=0.25' -> {"background_p": 0.5, "scale": 0.25}, checked
    against AugmentConfig's fields and types."""
    from dataclasses import fields

    from .augment import AugmentConfig  # heavy: imports torch

    known = {f.name: f.type for f in fields(AugmentConfig)}
    out: dict = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise HemascanError(f"--augment: {item!r} is not KEY=VALUE with KEY one of {', '.join(known)}")
        kind = known[key] if isinstance(known[key], str) else known[key].__name__
        value = value.strip().lower()
        if kind == "bool":
            if value not in BOOLEANS:
                raise HemascanError(f"--augment: {key} needs true or false, not {value!r}")
            out[key] = BOOLEANS[value]
            continue
        try:
            number = int(value) if kind == "int" else float(value)
        except ValueError:
            raise HemascanError(f"--augment: {key} needs a number, not {value!r}") from None
        top = AUGMENT_LIMITS.get(key, 1.0 if key.endswith("_p") else 10.0)
        if not (math.isfinite(number) and 0 <= number <= top):  # nan trained on NaN images and broke the card's JSON
            raise HemascanError(f"--augment: {key} must be a number from 0 to {top:g}, not {value!r}")
        out[key] = number
    return out


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
AUGMENT_LIMITS = {"rotate_degrees": 180.0, "hue": 0.5, "background_threshold": 255, "blur_sigma": 20.0}


def _echo_int8(app, rec: dict) -> None:
    if "agreement" not in rec:
        app.echo(f"no int8 model: {rec.get('reason')}; the model runs in fp32")
        return
    app.echo(f"int8 agrees with fp32 on {rec['agreement']:.2%} of {rec['n_checked']} held-out labels: "
             + ("added" if rec["accepted"] else "rejected (below 99.5%), the model runs in fp32"))


def _row_metrics(summary: dict) -> dict:
    ev = summary.get("evaluation", {})
    out = {"train_seconds": summary["train_seconds"], "history": summary["history"], "best": summary["best"],
           "calibration": summary.get("calibration"), "split": summary["split"]}
    for k in ("as_is", "grayscale", "stain_perturbed", "ood", "colour_histogram_baseline"):
        if k in ev:
            out[k] = ev[k]
    return json.loads(json.dumps(out, default=float))


def format_summary(summary: dict) -> str:
    from .metrics import EVAL_COLUMNS, markdown_table  # heavy: imports scikit-learn, torch

    lines = [f"status: {summary['status']}  train time: {summary['train_seconds']:.0f} s  precision: "
             f"{summary['precision']}  device: {summary['device']}  best epoch: {summary['best']['epoch']}"]
    cal = summary.get("calibration") or {}
    if cal:
        lines.append(f"temperature {cal['temperature']:.3f}; validation ECE {cal['val_ece_before']:.4f} -> "
                     f"{cal['val_ece_after']:.4f}; uncertain below {cal['uncertain_threshold']:.3f}")
    ev = summary.get("evaluation") or {}
    rows = []
    for k in ("as_is", "grayscale", "stain_perturbed"):
        if k in ev:
            rows.append({"variant": f"model, {k.replace('_', ' ')}", **ev[k]})
    cb = ev.get("colour_histogram_baseline")
    if cb:
        for k in ("as_is", "grayscale", "stain_perturbed"):
            rows.append({"variant": f"colour-histogram MLP, {k.replace('_', ' ')}", **cb[k]})
    if rows:
        lines += ["", f"held-out test ({summary['split']['method']} split):", markdown_table(rows, EVAL_COLUMNS)]
    per_subject = (ev.get("as_is") or {}).get("per_subject")
    if per_subject:
        from .metrics import per_group_markdown  # heavy: imports scikit-learn, torch

        lines += ["", "held-out test per subject (as is):",
                  per_group_markdown(per_subject, list(summary["evaluation"]["as_is"]["per_class"]))]
    if ev.get("ood"):
        lines += ["", "OOD separation by calibrated confidence (AUROC; fraction flagged uncertain):"]
        lines += [f"  {k}: AUROC {v['auroc']:.3f}; flagged {v['flagged_uncertain']:.2f} (n={v['n']})" for k, v in ev["ood"].items()]
    if summary.get("package"):
        lines += ["", f"model package: {summary['package']}"]
    return "\n".join(lines)


# ---- evaluate --------------------------------------------------------------------------

def _configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="registered model name or a model package folder (default: the active model)")
    p.add_argument("--data", required=True, type=existing_folder, help="folder of class folders (aliases accepted, e.g. all/hem)")
    p.add_argument("--split", default="none", choices=["none", "patient", "subject", "random"],
                   help="none: every image (default); patient/subject/random: only --subset of that split")
    p.add_argument("--label-all", metavar="CLASS",
                   help="every image under --data (any folders) is of this class of the model, e.g. "
                        "--label-all Normal on a folder of normal cells from another lab: accuracy is then the "
                        "share called CLASS")
    p.add_argument("--subset", default="test", choices=["test", "val", "train"],
                   help="which block of the patient split to evaluate on (default test)")
    p.add_argument("--fold", type=FOLD, default=4, help="which block of the patient split is the test block (default 4)")
    p.add_argument("--seed", type=SEED, default=0, help="random-split seed and stain-perturbation seed")
    p.add_argument("--variants", default="as_is,grayscale,stain_perturbed",
                   help="comma list of as_is, grayscale, stain_perturbed")
    p.add_argument("--json", type=non_empty_path, help="write the metrics (as-is) to this file; the other variants under 'variants'")
    p.add_argument("--runtime", default="torch-fp32", choices=["torch-fp32", "classify"],
                   help="torch-fp32: the weights as trained (default); classify: as `hemascan classify` runs "
                        "the model on this machine (OpenVINO int8 on a CPU where the package has it)")


@command("evaluate", "measure a model on a labelled folder (accuracy, per-class P/R/F1, confusion, ECE)",
         configure=_configure_evaluate)
def evaluate_cmd(args: argparse.Namespace, app) -> int:
    from . import augment as aug  # heavy: imports torch
    from .engine import evaluate  # heavy: imports scikit-learn, torch
    from .metrics import EVAL_COLUMNS, markdown_table, per_group_markdown, per_group_metrics, softmax  # heavy: imports scikit-learn, torch

    pkg = _resolve_model(args.model, app)
    model, card = load_model(pkg)
    logits_fn, runtime = None, "torch fp32"
    if args.runtime == "classify":
        predictor = Predictor(pkg, cache_dir=app.paths.cache, settings=app.paths.settings)
        logits_fn, runtime = predictor.logits, predictor.runtime
    if args.label_all:
        if args.label_all not in card.classes:
            raise HemascanError(f"--label-all {args.label_all!r} is not a class of the model ({', '.join(card.classes)})")
        if args.split != "none":
            raise HemascanError("--label-all evaluates every image; it takes no --split")
        ds = scan_as_one_class(Path(args.data), card.taxonomy, args.label_all)
    else:
        ds = scan_class_folders(Path(args.data), card.taxonomy)
    if list(ds.classes) != list(card.classes):
        raise HemascanError(f"dataset classes {ds.classes} do not match the model's {card.classes}")
    if args.split != "none":
        if args.split == "patient":
            compute_hashes(ds)
        sp = make_split(ds, args.split, seed=args.seed, fold=args.fold)
        ds = ds.subset(getattr(sp, args.subset))
    prep = card.prep
    left_out = ""
    if card.input == "cell" and card.cell_crops == "cut_out":  # as classify gives it a single-cell crop
        images, kept = cell_crop_inputs(ds.paths, card, app.paths.cache / "train-images")
        if not kept.any():
            raise HemascanError(f"the cell finder found no cell in any of the {len(ds)} images under {args.data}")
        if not kept.all():
            left_out = f"; {int((~kept).sum())} without a cell the finder found, left out"
            ds = ds.subset([i for i, k in enumerate(kept) if k])
        inputs = f"the central found cell of each image, cut out {card.cut_out_side_um:g} um wide as classify does"
    else:
        images = load_images(ds, prep, app.paths.cache / "train-images")
        inputs = "each image whole through the model's preprocessing"
    variants = {"as_is": lambda x: x, "grayscale": aug.to_grayscale,
                "stain_perturbed": lambda x: aug.stain_perturb(x, seed=args.seed)}
    results = {}
    subjects = [subject_of(p) for p in ds.paths]
    for v in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if v not in variants:
            raise HemascanError(f"unknown variant {v!r}")
        m = evaluate(model, variants[v](images), ds.labels, ds.classes, prep, "cpu", card.temperature,
                     logits_fn=logits_fn)
        logits = m.pop("logits")
        if any(subjects):
            m["per_subject"] = per_group_metrics(ds.labels, softmax(logits, card.temperature), subjects, ds.classes)
        results[v] = m
    rows = [{"variant": k.replace("_", " "), **m} for k, m in results.items()]
    app.echo(f"model {card.name} ({card.architecture}, {runtime}), {len(ds)} images from {args.data}"
             + (f", {args.split} split {args.subset} subset (fold {args.fold})" if args.split != "none" else "")
             + left_out)
    app.echo(f"input: {inputs}")
    app.echo(markdown_table(rows, EVAL_COLUMNS))
    first = next(iter(results.values()))
    app.echo(macro_over_line(first))
    app.echo("confusion matrix (rows true, columns predicted; " + ", ".join(ds.classes) + "):")
    for cls, r in zip(ds.classes, first["confusion_matrix"]):
        app.echo(f"  {cls:>12}: {r}")
    if first.get("per_subject"):
        app.echo(f"per subject ({next(iter(results))}):")
        app.echo(per_group_markdown(first["per_subject"], ds.classes))
    if args.json:
        out = {k: first[k] for k in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "balanced_accuracy")}
        if first.get("per_subject"):
            out["per_subject"] = first["per_subject"]
        out.update({"model": card.name, "n": first["n"], "classes": ds.classes, "macro_precision": first["macro_precision"],
                    "macro_recall": first["macro_recall"], "macro_over": "classes present in the folder",
                    "classes_present": first["classes_present"], "classes_absent": first["classes_absent"],
                    "images_per_s": first["images_per_s"],
                    "inputs": inputs, "n_without_cell": int(len(kept) - kept.sum()) if left_out else 0,
                    "split": args.split, "subset": args.subset if args.split != "none" else None, "runtime": runtime,
                    "variants": {k: {kk: vv for kk, vv in m.items()} for k, m in results.items()}})
        Path(args.json).write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
        app.echo(f"metrics written to {args.json}")
    return 0


def macro_over_line(m: dict) -> str:
    """Which classes the macro figures average over, in words: those present in the folder."""
    line = f"macro P/R/F1 over the classes present in the folder: {', '.join(m['classes_present']) or 'none'}"
    if m["classes_absent"]:
        line += f" (absent, left out: {', '.join(m['classes_absent'])})"
    return line


def _resolve_model(model: str | None, app) -> Path:
    if model and Path(model).is_dir():
        return Path(model)
    with app.db.session() as s:
        version = get_version(s, model) if model else require_active_version(s)
        return local_package(s, version, app.paths)


# ---- compare -----------------------------------------------------------------------------

def _configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=existing_folder, help="class folders to train and compare on")
    p.add_argument("--split", default="patient",
                   help="patient, subject or random; a comma list (e.g. subject,random) runs each and adds a "
                        "side-by-side table")
    p.add_argument("--fold", type=FOLD, default=4, help="which block of the patient split is the test block (default 4)")
    p.add_argument("--input-size", type=INPUT_SIZE, default=64, help="CNN input size for the seed CNNs (default 64)")
    p.add_argument("--epochs", type=EPOCHS, default=8, help="epochs for each seed CNN")
    p.add_argument("--seed", type=SEED, default=0, help="random seed")
    p.add_argument("--out", type=non_empty_path, help="write the Markdown table (and a .json beside it) here")
    p.add_argument("--only", help="comma list of row keys to run (cnn,cnn_dedup,svm,rf,cnn_svm,baseline)")
    p.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads")


def _configure_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model package directory (as written by train, before it is shared)")
    p.add_argument("--data", required=True, type=existing_folder, help="the class folders it was trained on: calibration uses its training "
                   "side of the card's split, the agreement check its validation + test sides")


@command("quantize", "add a checked int8 model to a package (OpenVINO, for fast CPU classification)",
         configure=_configure_quantize)
def quantize_cmd(args: argparse.Namespace, app) -> int:
    package = Path(args.model)
    if not package.is_dir():
        raise HemascanError(f"no model package directory at {package}")
    app.echo(f"quantizing {package} (calibration on training images, check on held-out images) ...")
    rec = quantize_from_folder(package, Path(args.data), cache_dir=app.paths.cache / "train-images")
    if "agreement" not in rec:  # not made: too few held-out images to check it on
        app.echo(f"no int8 model: {rec.get('reason')}; the package stays fp32")
        return 1
    verdict = "added to the package" if rec["accepted"] else "REJECTED (the package stays fp32)"
    app.echo(f"int8 agrees with fp32 on {rec['agreement']:.2%} of {rec['n_checked']} held-out labels "
             f"(needs >= 99.5%): {verdict}; quantization took {rec['quantize_seconds']} s")
    return 0 if rec["accepted"] else 1


def _configure_guard(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model package directory")
    p.add_argument("--data", required=True, type=existing_folder,
                   help="the class folders the model was trained on (its card's split is reused)")
    p.add_argument("--foreign", action="append", default=[], metavar="NAME=FOLDER",
                   help="a folder of images from elsewhere to measure the guard on (repeatable)")


@command("guard", "fit a package's foreign-image guard on its training side and measure it",
         configure=_configure_guard)
def guard_cmd(args: argparse.Namespace, app) -> int:
    from .guard import guard_from_folder  # heavy: imports torch

    package = Path(args.model)
    if not package.is_dir():
        raise HemascanError(f"no model package directory at {package}")
    foreign = {}
    for item in args.foreign:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise HemascanError(f"--foreign needs NAME=FOLDER with an existing folder, not {item!r}")
        foreign[name] = Path(folder)
    info = guard_from_folder(package, Path(args.data), foreign, cache_dir=app.paths.cache / "train-images")
    app.echo(f"guard fitted on {info['fitted_on']}; threshold {info['threshold']:.1f}, set on "
             f"{info['threshold_from']}: {info['threshold_rule']}")
    if "in_lab_test_flagged" in info:
        app.echo(f"in-lab test side: {info['in_lab_test_flagged']:.1%} flagged of {info['n_in_lab_test']}")
    for name, f in info.get("foreign", {}).items():
        app.echo(f"{name:28s} n={f['n']:<5d} AUROC {f['auroc']:.3f}  flagged {f['flagged']:.1%}  "
                 f"flagged or uncertain {f['flagged_or_uncertain']:.1%}  called with confidence {f['confident_call']:.1%}")
    return 0


@command("compare", "reproduce the seed experiments (CNNs, SVM, random forest, CNN features + SVM) as a Markdown table",
         configure=_configure_compare)
def compare_cmd(args: argparse.Namespace, app) -> int:
    from .compare import CompareConfig, compare, compare_splits  # heavy: imports scikit-learn, torch

    splits = [v.strip() for v in args.split.split(",") if v.strip()]
    bad = [v for v in splits if v not in SPLIT_METHODS or v == "all"]
    if not splits or bad:
        raise HemascanError(f"--split: {', '.join(bad) or 'nothing'} not among patient, subject, random")
    cfg = CompareConfig(data=args.data, split=splits[0], fold=args.fold, input_size=args.input_size,
                        epochs=args.epochs, seed=args.seed, cache_dir=str(app.paths.cache / "train-images"),
                        only=[s.strip() for s in args.only.split(",")] if args.only else None, threads=args.threads)
    job = compare(cfg, cancel=app.cancel) if len(splits) == 1 else compare_splits(cfg, splits, cancel=app.cancel)
    result = app.progress(job, "compare")
    app.echo(result["markdown"])
    if args.out:
        Path(args.out).write_text(result["markdown"] + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
        app.echo(f"written to {args.out}")
    return 0
