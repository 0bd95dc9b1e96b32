"""Core CLI commands: scan, classify, submit, queue, worker, import-labels, export, case, models, audit, sample,
demo, differential."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from core.app.command import App, command
from core.app.options import int_range, name_up_to, non_empty_path, positive_float
from core.errors import EXIT_AUDIT_BROKEN, HemascanError
from core.storage.audit import parse_anchor, verify_chain
from core.imaging.scan import scan
from core.storage import Prediction
from core.imaging.scan import images_under
from core.inference.predict import classify
from core.inference.outcome import OUTSIDE_REASONS
from core.cells.finder import IMAGE_KINDS
from core.models.registry import version_ref
from core.inference.cells import is_cell_version
from core.app.workqueue import queue_status, submit
from core.app.workqueue import CLAIM_SIZE, LEASE_S, POLL_S
from core.storage.errors import is_transient
from core.app.workqueue import Backoff, retry_sentence
from core.app.workqueue import default_worker_name
from core.app.workqueue import run_worker
from core.review.cell_import import import_labels_and_cells
from core.review.cells import folder_cell_counts
from core.review.export import EXPORTERS
from core.review.cases import case_name, case_name_problem, rename_case
from core.storage.identity import reviewer_for
from core.models.archive import export_model
from core.models.archive import import_model
from core.models.registry import lineage
from core.storage import TrainingRun
from core.models.runs import fail_stale_runs
from core.models.registry import list_versions, register_package
from core.models.registry import CELL, FIELD, KIND_LOOKS, active_version
from core.models.registry import activate, rollback
from core.app.sample import generate
from core.review import differential as diff

# Bounds shared by the commands' options (checked before any work: core/app/options.py).
BATCH_SIZE = int_range(1, 4096)
THREADS = int_range(1, 256)
SEED = int_range(0, 2**32 - 1)  # numpy's seeds
PERSON = name_up_to(128)  # the database's reviewer / submitted_by / worker columns
REASON = name_up_to(2000)  # an amendment's reason
MODEL_NAME = name_up_to(128)  # model_versions.name
SAMPLES_PER_CLASS_MAX = 10_000
SAMPLES_PER_CLASS = int_range(1, SAMPLES_PER_CLASS_MAX)

DISCLAIMER = "hemascan supports and does not replace diagnosis: every result must be reviewed by a qualified person."


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path, help="folder of images (searched recursively)")


def _print_errors(app: App, errors, n_total: int) -> None:
    for path, reason in errors[:20]:
        app.echo(f"  ! {path}: {reason}")
    if n_total > 20:
        app.echo(f"  ... and {n_total - 20} more (see 'hemascan export' / the files table)")


def _print_scan(app: App, s) -> None:
    app.echo(f"scanned {s.root}: {s.n_files} image files ({s.n_new} new, {s.n_changed} changed, "
             f"{s.n_unchanged} unchanged), {s.n_skipped} other files skipped, {s.n_errors} problems"
             + (f", {s.n_missing} no longer present" if s.n_missing else "")
             + (" [cancelled]" if s.cancelled else ""))
    _print_errors(app, s.errors, s.n_errors)


@command("scan", "record the images in a folder (content hash, size, perceptual hash)", _folder)
def cmd_scan(args, app: App) -> int:
    s = app.progress(scan(app.db, args.folder, app.cancel), "scan")
    _print_scan(app, s)
    return 130 if s.cancelled else 0


def _classify_args(p: argparse.ArgumentParser) -> None:
    _folder(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--model", help="model version name (default: the active one)")
    p.add_argument("--batch-size", type=BATCH_SIZE, help="images per model batch (default: 32 on CPU, 256 on CUDA)")
    p.add_argument("--workers", type=THREADS, help="decode threads")
    p.add_argument("--engine", choices=["auto", "openvino", "torch"], default=None,
                   help="auto (default): OpenVINO on a CPU where installed, torch on CUDA")
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16", "fp16"], default="auto",
                   help="auto (default): the package's checked int8 model on a CPU (else fp32), bf16/fp16 on CUDA")
    p.add_argument("--images", choices=IMAGE_KINDS, default=None,
                   help="what the folder's images are, for the cell finder: fields (a camera's fields: every "
                        "white cell in each), crops (pre-cut single cells, e.g. a CellaVision export: the central "
                        "cell only) or auto (the finder judges each image); a kind given finds the cells of images "
                        "searched with another kind again. Default: images already searched keep their kind, "
                        "new ones are auto")


def _summarise_predictions(app: App, folder: str, ref) -> tuple[int, int]:
    """Print ``ref``'s (the VersionRef that classified) counts per class, uncertain and
    outside the model's experience; returns (outside, total)."""
    from sqlalchemy import select


    with app.db.session() as s:
        version = ref.row(s)
        ids = [i for i, _ in images_under(s, folder)]
        counts: Counter = Counter()
        uncertain = outside = assessed = 0
        reasons: Counter = Counter()  # outside, by why (None: the guard's distance)
        for start in range(0, len(ids), 900):
            for label, unc, ood, why in s.execute(
                    select(Prediction.label, Prediction.uncertain, Prediction.out_of_distribution,
                           Prediction.outside_reason).where(
                        Prediction.model_version_id == version.id, Prediction.image_id.in_(ids[start:start + 900]))):
                assessed += ood is not None
                if ood:  # its class is not reliable: counted apart, not as a class
                    outside += 1
                    reasons[why] += 1
                    continue
                counts[label] += 1
                uncertain += bool(unc)
    total = sum(counts.values()) + outside
    if not total:
        return 0, 0
    classified = total - outside
    app.echo(f"predictions by {version.name}" + (" (PLACEHOLDER, untrained: results are meaningless)" if version.card.get("placeholder") else "") + ":")
    for cls in version.card["classes"]:
        app.echo(f"  {cls:<12} {counts[cls]:>7}  {100 * counts[cls] / max(classified, 1):5.1f}%")
    app.echo(f"  {'uncertain':<12} {uncertain:>7}  {100 * uncertain / max(classified, 1):5.1f}%  (below the model's confidence threshold)")
    if assessed:
        app.echo(f"  outside the model's experience: {outside} of {total} ({100 * outside / total:.1f}%): unlike the "
                 "images it was trained on; their class is not reliable and not counted above")
        for why, n in sorted((w, n) for w, n in reasons.items() if w in OUTSIDE_REASONS):
            app.echo(f"    of which {n}: {OUTSIDE_REASONS[why]}")
    else:
        app.echo("  (this model has no foreign-image guard: images unlike its training data are not flagged)")
    return outside, total


@command("classify", "scan a folder and predict every image not yet predicted by the active model", _classify_args)
def cmd_classify(args, app: App) -> int:
    version = None  # the active field model and, if one is active, the active cell model (read once, at the start)
    if args.model:
        with app.db.session() as db_session:
            version = version_ref(db_session, args.model)  # the one version this run predicts with
    s = app.progress(classify(app.db, app.paths, args.folder, version, device=args.device, cancel=app.cancel,
                              batch_size=args.batch_size, workers=args.workers,
                              engine=args.engine, precision=args.precision, image_kind=getattr(args, "images", None)), "classify")
    _print_scan(app, s.scan)
    app.echo(f"model {s.model} on {s.device}: {s.n_predicted} predicted, {s.n_errors} failed, "
             f"{s.n_todo - s.n_predicted - s.n_errors} left"
             + (f" in {s.seconds:.1f} s ({s.rate:.0f} images/s)" if s.seconds else "")
             + (" [cancelled: run again to continue]" if s.cancelled else ""))
    if s.cell_model is not None and not (s.n_cells or s.n_cells_classified or s.n_cell_errors
                                         or s.n_cell_images_restored):
        with app.db.session() as db_session:  # "0 found" would read as "this folder has no cells"
            n_cells, n_images = folder_cell_counts(db_session, args.folder)
        app.echo(f"cells: nothing new to find ({n_cells} cells in {n_images} images already found)")
    elif s.cell_model is not None:
        app.echo(f"cells: {s.n_cells} found in {s.n_cell_images} images, {s.n_cells_classified} classified "
                 f"by {s.cell_model}" + (f"; {s.n_cell_errors} file(s) could not be read" if s.n_cell_errors else "")
                 + (f"; {s.n_cell_grayscale} grayscale image(s) not searched: white cells are found by the "
                    "colour of their stain" if s.n_cell_grayscale else "")
                 + (f"; {s.restored_cells_sentence()}" if s.n_cell_images_restored else ""))
    _print_errors(app, s.errors, max(s.n_errors, s.n_cell_errors))
    if s.version is not None:
        _summarise_predictions(app, args.folder, s.version)
    app.echo(DISCLAIMER)
    return 130 if s.cancelled else 0


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path, help="folder of images that every worker can read (e.g. on the lab's share)")
    p.add_argument("--model", help="model version name (default: the active one)")
    p.add_argument("--by", type=PERSON, help="name stored with the submission (default: the OS user)")
    p.add_argument("--images", choices=IMAGE_KINDS, default=None,
                   help="what the folder's images are, kept with it for the workers (a cell model only): fields, "
                        "crops (one pre-cut cell each) or auto; default: as the folder was submitted before, else auto")


def _print_queue(app: App, statuses) -> None:
    for q in statuses:
        kind = f", images: {q.image_kind}" if q.image_kind else ""
        app.echo(f"{q.folder} ({q.model}{kind}, submitted {q.submitted_at:%Y-%m-%d %H:%M} by {q.submitted_by}): "
                 f"{q.total} images: {q.describe()}")


@command("submit", "queue a folder for the classify workers ('hemascan worker' on any machine)", _submit_args)
def cmd_submit(args, app: App) -> int:
    with app.db.session() as db_session:
        version = version_ref(db_session, args.model)
        if args.images is not None and not is_cell_version(db_session, version.id):
            cell = active_version(db_session, CELL)
            raise HemascanError(
                f"--images says what the images are for finding cells, but {version.name} looks at whole images "
                "and finds no cells: " + (f"add --model {cell.name} (the active cell model)" if cell is not None
                                          else "no cell model is active"))
    s = app.progress(submit(app.db, app.paths, args.folder, app.cancel, version, args.by, args.images), "submit")
    _print_scan(app, s.scan)
    if s.cancelled:
        app.echo("submit cancelled: run it again to queue the rest")
        return 130
    app.echo(f"queued {s.n_queued} of {s.n_images} images for {s.model}"
             + (f"; {s.n_requeued} that had failed queued again" if s.n_requeued else "")
             + (f"; {s.n_already_queued} were queued already" if s.n_already_queued else "")
             + (f"; {s.n_already_done} predicted already" if s.n_already_done else ""))
    _print_queue(app, queue_status(app.db, args.folder))
    if s.n_queued or s.n_requeued:
        app.echo("'hemascan worker' on a machine that reads this folder (and uses this database) classifies them")
    return 0


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", type=non_empty_path, help="only this folder (default: every submitted folder)")


@command("queue", "show the classify workers' queue per submitted folder: queued, running, done, failed", _queue_args)
def cmd_queue(args, app: App) -> int:
    statuses = queue_status(app.db, args.folder)
    if not statuses:
        app.echo("nothing submitted" + (f" for {args.folder}" if args.folder else ""))
    _print_queue(app, statuses)
    return 0


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="exit when nothing is queued or running any more (default: wait for new work)")
    p.add_argument("--name", type=PERSON, help="this worker's name in the queue (default: host:pid)")
    p.add_argument("--claim", type=int_range(1, 100_000), default=CLAIM_SIZE,
                   help=f"images claimed at a time (default {CLAIM_SIZE})")
    p.add_argument("--lease", type=positive_float(86_400), default=None,
                   help=f"seconds a claim is kept without a heartbeat before another worker takes it over "
                        f"(default {LEASE_S:g}; $HEMASCAN_WORKER_LEASE_S)")
    p.add_argument("--poll", type=positive_float(3_600), default=POLL_S,
                   help=f"seconds between looks at an empty queue (default {POLL_S:g})")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--batch-size", type=BATCH_SIZE, help="images per model batch")
    p.add_argument("--workers", type=THREADS, help="decode threads")
    p.add_argument("--engine", choices=["auto", "openvino", "torch"], default=None,
                   help="inference engine (default: $HEMASCAN_ENGINE, else auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16", "fp16"], default="auto",
                   help="numeric precision (default auto: the runtime plan's choice)")


def _open_retrying(app: App, say) -> object | None:
    """The database, waiting (with growing pauses) while it cannot be reached; None if
    stopped meanwhile. A problem waiting does not cure (a wrong password) is raised."""

    backoff = Backoff(max_s=app.settings.worker_retry_max_s)
    while True:
        try:
            return app.db
        except Exception as exc:
            if not is_transient(exc):
                raise
            say(retry_sentence(exc, app.db_url, backoff.next_s))
            if not backoff.wait(app.cancel):
                return None


@command("worker", "classify the queued folders ('hemascan submit') in batches, on this machine", _worker_args)
def cmd_worker(args, app: App) -> int:
    import signal
    import threading


    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, lambda *_: app.cancel.set()) if main_thread else None
    try:  # a service manager's stop (SIGTERM), like Ctrl+C: finish the batch, give back the rest
        return _worker(args, app, args.name or default_worker_name())
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)


def _worker(args, app: App, name: str) -> int:
    import sys


    def say(msg: str) -> None:
        print(f"hemascan: worker {name}: {msg}", file=sys.stderr, flush=True)

    db = _open_retrying(app, say)
    if db is None:
        return 130
    s = app.progress(run_worker(db, app.paths, app.cancel, once=args.once, name=name, claim_size=args.claim,
                                lease_s=args.lease if args.lease is not None else app.settings.worker_lease_s,
                                poll_s=args.poll, device=args.device, engine=args.engine,
                                precision=args.precision, batch_size=args.batch_size, workers=args.workers,
                                notice=say), "worker")
    app.echo(f"worker {s.worker}: {s.n_predicted} predicted, {s.n_failed} failed, in {s.n_claims} claims, "
             f"{s.seconds:.1f} s ({s.rate:.1f} images/s; database {s.db_seconds:.2f} s"
             f" = {100 * s.db_seconds / max(s.seconds, 1e-9):.0f}% of the time)"
             + (f", {s.n_retries} database failures waited out" if s.n_retries else "")
             + (" [stopped: the rest stays queued]" if s.cancelled else ""))
    return 130 if s.cancelled else 0


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path,
                   help="folder whose sub-folder names are classes (e.g. Benign/ Early/ Pre/ Pro/, or all/ hem/)")
    p.add_argument("--reviewer", type=PERSON, help="name stored with the events (default: the OS user; on a lab's "
                                                   "PostgreSQL server the reviewer is the database login, and another "
                                                   "name is refused)")
    p.add_argument("--taxonomy", help="only accept folder names of this taxonomy")
    p.add_argument("--amend-reason", type=REASON, help="why a released case is changed (an amendment: a "
                                                       "supervisor's act, shown in the next report)")


@command("import-labels", "record class-folder names as labels (source=dataset)", _import_args)
def cmd_import_labels(args, app: App) -> int:
    with app.db.session() as s:  # on a lab server the reviewer is the login: another name is refused
        reviewer_for(s, args.reviewer)
    both = app.progress(import_labels_and_cells(app.db, args.folder, args.reviewer, args.taxonomy, app.cancel,
                                                args.amend_reason), "import")
    s = both.labels
    _print_scan(app, s.scan)
    app.echo(f"labels recorded: {s.n_labelled} ({', '.join(f'{k}: {v}' for k, v in sorted(s.per_class.items())) or 'none'}); "
             f"{s.n_already} already had that label")
    if s.n_unknown_folder:
        app.echo(f"  {s.n_unknown_folder} images in folders that are not a known class: {', '.join(sorted(s.unknown_folders))}")
    app.echo(f"cells labelled (single-cell crops): {both.n_cells_labelled}; {both.n_cells_already} already had that "
             f"label; {both.n_not_single_cell} images are not single-cell crops and keep their image label only"
             + (f"; {both.n_field_class} images are in folders of whole-field classes (image label only)"
                if both.n_field_class else ""))
    if both.errors:
        app.echo(f"  the cell finder could not read {len(both.errors)} images:")
        _print_errors(app, both.errors, len(both.errors))
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    # core.review.export is imported when the command runs, not when the parser is built (start-up time)
    p.add_argument("--format", default="csv",
                   help="csv: one row per image (the default); cells: one row per cell, its box in the image")
    p.add_argument("--output", "-o", required=True, type=non_empty_path, help="file to write")
    p.add_argument("--folder", type=non_empty_path, help="only images under this folder")
    p.add_argument("--model", type=MODEL_NAME,
                   help="whose predictions (default: the active model; for cells, the active cell model)")


@command("export", "write one row per image (or per cell): path, prediction, probabilities, reviewed label",
         _export_args)
def cmd_export(args, app: App) -> int:
    if args.format not in EXPORTERS:
        raise HemascanError(f"unknown export format {args.format!r}; available: {', '.join(sorted(EXPORTERS))}")
    n = EXPORTERS[args.format](app.db, args.output, folder=args.folder, model=getattr(args, "model", None))
    app.echo(f"wrote {n} rows to {args.output}")
    return 0


def _case_name_arg(text: str) -> str:
    why = case_name_problem(text)
    if why:
        raise argparse.ArgumentTypeError(why)
    return text.strip()


def _case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path, help="the case's folder (one sample)")
    p.add_argument("--rename", metavar="NAME", type=_case_name_arg,
                   help="what the lab calls the case (default name: the folder's name)")


@command("case", "print a case's name (a case is a folder: one sample), or rename it", _case_args)
def cmd_case(args, app: App) -> int:
    with app.db.session() as s:
        name = rename_case(s, args.folder, args.rename) if args.rename is not None else case_name(s, args.folder)
    app.echo(name)
    return 0


def _models_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", help="what to do with the model versions")
    sub.add_parser("list", help="list registered model versions, their input kind (field or cell) and the active "
                                "one of each kind (*)")
    a = sub.add_parser("activate", help="make a version the active one of its kind, field or cell (recorded in the "
                                        "activation log)")
    a.add_argument("name")
    r = sub.add_parser("register", help="register a model package directory")
    r.add_argument("package", type=non_empty_path)
    r.add_argument("--activate", action="store_true")
    rb = sub.add_parser("rollback", help="make an earlier version active again (recorded)")
    rb.add_argument("name")
    e = sub.add_parser("export", help="write a version as one file (safetensors + card, hash-checked)")
    e.add_argument("name")
    e.add_argument("file", type=non_empty_path)
    i = sub.add_parser("import", help="check and register a model file written by 'models export'")
    i.add_argument("file", type=non_empty_path)
    i.add_argument("--activate", action="store_true")
    sub.add_parser("lineage", help="versions with their parents, training data and validation metrics")
    sub.add_parser("runs", help="training runs and their status")


def _models_export(args, app: App) -> int:
    dest = export_model(app.db, args.name, Path(args.file), app.paths)
    app.echo(f"wrote {args.name} to {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _models_import(args, app: App) -> int:
    name = import_model(app.db, app.paths, Path(args.file), activate=args.activate)
    app.echo(f"imported {name}" + (" (active)" if args.activate else f"; activate with: hemascan models activate {name}"))
    return 0


def _models_lineage(args, app: App) -> int:
    for v in lineage(app.db):
        m, td = v["metrics"] or {}, v["training_data"] or {}
        acc = m.get("val_accuracy")
        app.echo(f"{'*' if v['active'] else ' '} {v['name']:<40} <- {v['parent'] or '-':<36} "
                 + (f"val acc {acc:.3f} " if isinstance(acc, float) else "")
                 + (f"train {td.get('n_train')} val {td.get('n_val')}" if "n_train" in td else ""))
    return 0


def _models_runs(args, app: App) -> int:
    from sqlalchemy import select


    fail_stale_runs(app.db)
    with app.db.session() as s:
        for r in s.scalars(select(TrainingRun).order_by(TrainingRun.id)):
            app.echo(f"{r.id:>4} {r.status:<10} {r.architecture:<16} {r.started_at:%Y-%m-%d %H:%M} {r.error or ''}")
    return 0


def _models_list(args, app: App) -> int:
    with app.db.session() as s:  # app.db is set up (core/app/bootstrap.py): the bundled models are there
        if args.action == "register":
            register_package(s, app.paths, Path(args.package), activate=args.activate)
        for v in list_versions(s):
            m = v.card.get("metrics") or {}
            acc = m.get("accuracy")
            app.echo(f"{'*' if v.is_active else ' '} {v.name:<36} {v.input_kind:<5} {v.architecture:<18} {v.taxonomy:<14} "
                     f"{'acc ' + format(acc, '.3f') if isinstance(acc, (int, float)) else ''}"
                     f"{'  PLACEHOLDER' if v.card.get('placeholder') else ''}")
    return 0


def _models_switch(args, app: App) -> int:
    done = {"activate": activate, "rollback": rollback}[args.action](app.db, args.name)
    kind = done["input_kind"]
    with app.db.session() as s:
        other = active_version(s, CELL if kind == FIELD else FIELD)
        unchanged = (f"; the active {other.input_kind} model, {other.name}, is unchanged" if other is not None else "")
    app.echo(f"{done['name']} is now the active {kind} model ({KIND_LOOKS[kind]})"
             f"{unchanged}")
    return _models_list(args, app)


MODEL_ACTIONS = {
    None: _models_list, "list": _models_list, "register": _models_list,
    "activate": _models_switch, "rollback": _models_switch,
    "export": _models_export, "import": _models_import, "lineage": _models_lineage, "runs": _models_runs,
}


@command("models", "list, register, activate, roll back, export or import model versions", _models_args)
def cmd_models(args, app: App) -> int:
    return MODEL_ACTIONS[getattr(args, "action", None)](args, app)


def _audit_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                             help="verify: walk the audit record's hash chain")
    v = sub.add_parser("verify", help="check that no label, cell label or model activation was changed or removed "
                       f"after it was written (exit 0: whole; {EXIT_AUDIT_BROKEN}: names the first event that does not match)")
    v.add_argument("--anchor", action="append", default=[], type=_anchor, metavar="SEQ:SHA256",
                   help="an event's number and hash as a case report printed it (\"Audit record\" line); the chain must "
                        "still hold it: this finds the newest events removed together with the head (repeatable)")


def _anchor(value: str):
    try:
        return parse_anchor(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@command("audit", "check the audit record (who labelled, corrected and activated what, and when)", _audit_args)
def cmd_audit(args, app: App) -> int:
    with app.db.session() as s:
        report = verify_chain(s, anchors=args.anchor)
    app.echo(report.sentence())
    return 0 if report.whole else EXIT_AUDIT_BROKEN


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path, help="where to write the synthetic images")
    p.add_argument("--per-class", type=SAMPLES_PER_CLASS, default=12,
                   help=f"images per class (1 to {SAMPLES_PER_CLASS_MAX})")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of the generated images")
    p.add_argument("--size", type=int_range(32, 2048), default=224, help="side in pixels (32 to 2048)")
    p.add_argument("--ext", default=".jpg", choices=[".jpg", ".png", ".bmp", ".tif"], help="file type of the images")


@command("sample", "write synthetic smear-like sample images (NOT real smears) in class folders", _sample_args)
def cmd_sample(args, app: App) -> int:
    paths = generate(Path(args.folder), args.per_class, args.seed, args.size, args.ext)
    app.echo(f"wrote {len(paths)} synthetic sample images under {args.folder}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-class", type=SAMPLES_PER_CLASS, default=25, help="generated images per class (default 25)")


@command("demo", "generate a synthetic sample folder, classify it with the bundled model, export CSV", _demo_args)
def cmd_demo(args, app: App) -> int:
    folder = app.paths.samples
    generate(folder, args.per_class, seed=0)
    app.echo(f"data directory: {app.paths.data_dir}")
    app.echo(f"sample folder (synthetic images, not real smears): {folder}")
    ns = argparse.Namespace(folder=str(folder), device="auto", model=None, batch_size=None, workers=None,
                            engine=None, precision="auto", images=None)
    rc = cmd_classify(ns, app)
    if rc:
        return rc
    app.echo("note: these synthetic images are, honestly, foreign to a model trained on real smears: the "
             "ones flagged 'outside the model's experience' above are flagged as they should be, and the "
             "classes given to the others mean nothing.")
    out = app.paths.data_dir / "demo-predictions.csv"
    return cmd_export(argparse.Namespace(format="csv", output=str(out), folder=str(folder)), app)


def _differential_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=non_empty_path, help="the case's folder of images (classified, with their cells)")
    p.add_argument("--json", type=non_empty_path, help="also write the differential to this JSON file")
    p.add_argument("--model", help="cell model version name (default: the active cell model)")
    p.add_argument("--threshold", type=positive_float(99.9), default=None,
                   help="blast percentage the lab decides on (default: $HEMASCAN_BLAST_THRESHOLD_PCT, 20)")


@command("differential", "a case's white-cell differential: per class n, % and 95% interval, blast %", _differential_args)
def cmd_differential(args, app: App) -> int:
    threshold = args.threshold if args.threshold is not None else app.settings.blast_threshold_pct
    with app.db.session() as s:
        vid = diff.cell_version_id(s, args.model)
        d = diff.case_differential(s, args.folder, vid, threshold_pct=threshold)
        why_none = None if d.n_cells else diff.no_cells_sentence(s, args.folder)
    if why_none:
        app.echo(why_none)
        return 0
    for line in diff.as_lines(d):
        app.echo(line)
    if args.json:
        diff.write_json(d, args.json)
        app.echo(f"wrote {args.json}")
    return 0
