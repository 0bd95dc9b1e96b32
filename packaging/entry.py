"""Entry point of the installed (PyInstaller-frozen) hemascan.

    hemascan                 start the desktop app (what the menu entry runs)
    hemascan COMMAND ...     the command line (scan, classify, gui, train, ...)
    hemascan --self-test     classify a few generated images with the bundled model into a
                             temporary database and run one small training step; exit 0
                             only if everything went right (headless: needs no display)

It also runs from source (``python packaging/entry.py --self-test``), which is how the
fast tests check the self-test logic without building a bundle.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

FROZEN = bool(getattr(sys, "frozen", False))
if not FROZEN:  # from source: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def variant() -> str:
    """'cpu' or 'cuda' for a frozen build (written by hemascan.spec), 'source' otherwise."""
    if not FROZEN:
        return "source"
    try:
        return (Path(sys._MEIPASS) / "BUILD_VARIANT").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def nvidia_driver_present() -> bool:
    """Cheap check (no torch import) for an installed NVIDIA driver."""
    from core.inference.runtime import cuda_driver_present

    return cuda_driver_present()


def device_notice() -> str | None:
    """The line to show when the build and the machine do not match (the app still runs, on CPU)."""
    v = variant()
    if v == "cuda" and not nvidia_driver_present():
        return "hemascan: notice: no NVIDIA driver found, running on the CPU (slower, results are the same)"
    if v == "cpu" and nvidia_driver_present():
        return ("hemascan: notice: this is the CPU-only build; the NVIDIA GPU in this machine is not used "
                "(install the CUDA build of hemascan to use it)")
    return None


def command_of(argv: list[str]) -> str | None:
    """The subcommand in a hemascan command line (global options come before it)."""
    it = iter(argv)
    for a in it:
        if a in ("--data-dir", "--db-url"):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def register_commands() -> None:
    """Entry points (importlib.metadata) do not exist in a frozen app: import the modules
    that contribute commands so they register themselves in core.app.cli.COMMANDS."""
    import core.app.commands  # noqa: F401
    import desktop.cli  # noqa: F401
    import trainer.cli  # noqa: F401
    import trainer.retrain_cli  # noqa: F401


def _check(ok: bool, what: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
    if not ok:
        failures.append(what)


def check_qt_plugins(failures: list[str]) -> None:
    """Qt's platform plugins must be where Qt looks for them (offscreen for headless
    runs, xcb for X11 desktops); the files are checked, no display is opened."""
    from PySide6.QtCore import QLibraryInfo

    platforms = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    names = {p.name for p in platforms.glob("*")} if platforms.is_dir() else set()
    for plugin in ("offscreen", "xcb") if sys.platform.startswith("linux") else ("offscreen",):
        _check(any(plugin in n for n in names), f"Qt platform plugin {plugin} in {platforms}", failures)


def check_qt_refcount(failures: list[str]) -> None:
    """The bundled PySide6 must not drop references to None while painting (PySide6 6.12.0
    did: the GUI aborted with 'none_dealloc' while scrolling, issue 11). Paints offscreen."""
    try:
        import PySide6

        from desktop.qtcheck import refcount_problem

        problem = refcount_problem()
        _check(problem is None, problem or f"Qt (PySide6 {PySide6.__version__}) paints without "
               "dropping references to None", failures)
    except Exception as exc:  # noqa: BLE001
        _check(False, f"Qt painting check ran ({type(exc).__name__}: {exc})", failures)


def check_training(failures: list[str]) -> None:
    """Every build trains (issue 13.3): the trainer's modules import, without torchvision
    (the CPU build has none), and one small augmented training step runs on generated
    images and changes the weights. A few seconds, most of them importing the trainer."""
    try:
        t0 = time.perf_counter()
        import numpy as np
        import torch

        import trainer.cli  # noqa: F401
        import trainer.retrain  # noqa: F401
        from core.models.architectures import build
        from core.imaging.preprocessing import Preprocessing
        from core.app.sample import smear_image
        from trainer.augment import AugmentConfig, Augmenter
        from trainer.engine import train_one_epoch

        rng = np.random.default_rng(0)
        classes = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
        images = np.stack([smear_image(c, rng, 64) for c in classes * 2])
        labels = np.arange(len(images)) % len(classes)
        torch.manual_seed(0)
        model = build("seed_cnn3", len(classes))
        before = [p.detach().clone() for p in model.parameters()]
        stats = train_one_epoch(
            model, images, labels, np.arange(len(images)), optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            scheduler=None, criterion=torch.nn.CrossEntropyLoss(), prep=Preprocessing(input_size=64),
            augmenter=Augmenter(AugmentConfig(background_p=0.5, scale=0.2, blur_p=0.5)), device=torch.device("cpu"),
            batch_size=4, epoch_seed=0)
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        ok = stats["n"] == len(images) and bool(np.isfinite(stats["loss"])) and moved
        _check(ok, f"trainer imports and an augmented training step runs ({stats['n']} images, "
               f"loss {stats['loss']:.3f}, weights {'changed' if moved else 'UNCHANGED'}, "
               f"{time.perf_counter() - t0:.1f} s)", failures)
        _check("torchvision" not in sys.modules, "training needs no torchvision", failures)
    except Exception as exc:  # noqa: BLE001  (a self-test reports, it does not crash)
        import traceback

        traceback.print_exc()
        _check(False, f"training step ran ({type(exc).__name__}: {exc})", failures)


def self_test(n_per_class: int = 2, device: str = "auto") -> int:
    """Generate ``n_per_class`` synthetic images per class, classify them with the bundled
    model into a fresh database in a temporary data directory, and check every result."""
    import tempfile

    t0 = time.perf_counter()
    failures: list[str] = []
    print(f"hemascan self-test ({variant()} build, python {sys.version.split()[0]})", flush=True)
    with tempfile.TemporaryDirectory(prefix="hemascan-selftest-") as tmp:
        os.environ["HEMASCAN_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ.pop("HEMASCAN_DB_URL", None)

        from core.config import load_settings, resources_dir, resolve_paths

        res = resources_dir()
        for rel in ("models/default/card.json", "models/default/model.safetensors",
                    "models/wbc-differential/card.json", "models/wbc-differential/model.safetensors",
                    "migrations/env.py", "migrations/script.py.mako", "icons/hemascan.png"):
            _check((res / rel).is_file(), f"resource {rel}", failures)
        _check(any((res / "migrations" / "versions").glob("*.py")), "migration scripts", failures)
        try:
            check_qt_plugins(failures)
        except Exception as exc:  # noqa: BLE001
            _check(False, f"Qt importable ({exc})", failures)
        check_qt_refcount(failures)

        check_training(failures)
        register_commands()
        from core.app.cli import COMMANDS

        for name in ("classify", "gui", "models", "train", "evaluate", "retrain"):
            _check(name in COMMANDS, f"command {name} registered", failures)

        from sqlalchemy import select

        from core.app.cli import App
        from core.storage import Image, Prediction
        from core.inference.predict import classify
        from core.app.sample import generate

        images = generate(Path(tmp) / "images", n_per_class=n_per_class, seed=7)
        paths = resolve_paths(None, load_settings())
        _check(str(paths.data_dir).startswith(str(Path(tmp).resolve())), "temporary data directory in use", failures)
        app = App(paths, None, quiet=True)
        try:
            s = app.progress(classify(app.db, app.paths, str(Path(tmp) / "images"), device=device), "self-test")
            print(f"  model {s.model} on {s.device}: {s.n_predicted} predicted, {s.n_errors} failed "
                  f"in {s.seconds:.2f} s", flush=True)
            # the CPU build must run the bundled int8 model through OpenVINO (the fast path)
            _check(s.device.startswith("CUDA") or "OpenVINO int8" in s.device, f"fast engine in use ({s.device})", failures)
            _check(s.n_predicted == len(images) and s.n_errors == 0 and not s.cancelled,
                   f"{len(images)} images classified without errors", failures)
            # the cell stage ran with the bundled cell model, without an unreadable image
            _check(bool(s.cell_model) and s.n_cell_errors == 0,
                   f"white cells looked for by the cell model {s.cell_model} ({s.n_cells} found in "
                   f"{s.n_cell_images} images, {s.n_cells_classified} classified)", failures)
            with app.db.session() as session:
                from core.models.registry import active_version

                version = active_version(session)  # the field model (the cell model's are checked apart)
                n_images = len(session.scalars(select(Image.id)).all())
                preds = session.scalars(select(Prediction).where(Prediction.model_version_id == version.id)).all() \
                    if version else []
                _check(n_images == len(images), f"{len(images)} images in the database ({n_images})", failures)
                _check(len(preds) == len(images), f"{len(images)} predictions in the database ({len(preds)})", failures)
                classes = list(version.card["classes"]) if version else []
                good = all(p.label in classes and abs(sum(p.probabilities) - 1.0) < 1e-3
                           and 0.0 <= p.confidence <= 1.0 and len(p.probabilities) == len(classes)
                           for p in preds)
                _check(bool(preds) and good, "every prediction is a known class with probabilities summing to 1", failures)
        except Exception as exc:  # noqa: BLE001  (a self-test reports, it does not crash)
            import traceback

            traceback.print_exc()
            _check(False, f"classification ran ({type(exc).__name__}: {exc})", failures)
        finally:
            engine = getattr(app._db, "engine", None)
            if engine is not None:  # release the SQLite file before the directory is removed
                engine.dispose()
    took = time.perf_counter() - t0
    if failures:
        print(f"self-test FAILED ({len(failures)} problems) in {took:.1f} s", flush=True)
        return 1
    print(f"self-test passed in {took:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if FROZEN:
        import multiprocessing

        multiprocessing.freeze_support()
        # Windows GUI executable (hemascan.exe, no console): stdout/stderr are None, and
        # anything that writes to them (progress bars, logging) would raise.
        for name in ("stdout", "stderr"):
            if getattr(sys, name) is None:
                setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
        # alembic loads the migration scripts from files: never write __pycache__ into the
        # install folder (read-only for users; would be left behind on uninstall).
        sys.dont_write_bytecode = True
        # torch.compile needs Python headers and a C compiler at run time: never in a bundle.
        os.environ.setdefault("HEMASCAN_COMPILE", "off")
    if argv and argv[0] == "--self-test":
        import argparse

        p = argparse.ArgumentParser(prog="hemascan --self-test")
        p.add_argument("--per-class", type=int, default=2)
        p.add_argument("--device", default="auto")
        a = p.parse_args(argv[1:])
        notice = device_notice()
        if notice:
            print(notice, file=sys.stderr, flush=True)
        return self_test(a.per_class, a.device)
    if argv and argv[0] == "--variant":
        print(variant())
        return 0
    register_commands()
    from core.app.cli import main as cli_main

    if not argv:
        argv = ["gui"]  # double-click / menu entry: the desktop app
    cmd = command_of(argv)
    if cmd in ("classify", "gui"):
        notice = device_notice()
        if notice:
            print(notice, file=sys.stderr, flush=True)
            if cmd == "gui":
                from desktop.qtcheck import exit_unless_gui_can_start

                exit_unless_gui_can_start()  # this creates a QApplication: say what to install first
                show_in_status_bar(notice.removeprefix("hemascan: notice: "))
    return cli_main(argv)


def show_in_status_bar(message: str, ms: int = 30000) -> None:
    """Show ``message`` in the main window's status bar once the desktop app is up (the
    menu entry has no terminal for stderr). Creates the QApplication the way desktop.app
    does, which then reuses it."""
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication, QMainWindow

    if QApplication.instance() is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        QApplication([sys.argv[0]])

    tries = iter(range(150))  # up to 30 s for the window to appear

    def show() -> None:
        for w in QApplication.topLevelWidgets():
            if isinstance(w, QMainWindow) and w.isVisible():
                w.statusBar().showMessage(message, ms)
                return
        if next(tries, None) is not None:
            QTimer.singleShot(200, show)  # not shown yet

    QTimer.singleShot(500, show)


if __name__ == "__main__":
    sys.exit(main())
