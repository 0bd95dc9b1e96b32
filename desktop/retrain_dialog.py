"""Retrain dialog: the reviewed data per class, the run's settings, live loss and
accuracy curves (pyqtgraph), time left, Cancel; when done, the new and the active
version side by side on the same validation images (metrics, bootstrap interval of the
accuracy difference, confusion matrices, images whose prediction changes) and
Promote / Keep current.

The job is ``trainer.retrain.retrain`` run through ``desktop.workers`` (the dialog's own
``Workers``, so training never blocks the window's classify / thumbnail pools); signals
carry plain data (Progress, dicts). The dialog is modeless: the app stays usable.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from sqlalchemy import case, distinct, func, select
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QFileDialog,
                               QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QMessageBox,
                               QProgressBar, QPushButton, QRadioButton, QSpinBox, QVBoxLayout)

from .classify_job import fmt_eta
from .retrain_compare import ComparisonView, fit_rows, set_cell, table
from .workers import Workers
from core.imaging.scan import under_folder
from core.inference.runtime import probe_host
from core.storage.orm import ImageFile, ModelVersion, Prediction
from core.review.reviewed import learns_from_cells
from core.review.reviewed import reviewed_summary as data_summary
from trainer.retrain import RetrainConfig
from trainer.retrain import retrain
from trainer.retrain import promote, promotion_advice
from core.models.registry import require_active_version
from desktop.models_panel import version_info

log = logging.getLogger(__name__)

# What each step after learning (trainer/retrain.py, Progress "package" with extra["step"]) does,
# in plain words: (with {n}, the number of images the step looks at; without it)
PACKAGE_STEPS = {
    "save": ("Saving the new version…",) * 2,
    "guard": ("Teaching the new version to recognise images unlike the {n} it learnt from…",
              "Teaching the new version to recognise images unlike the ones it learnt from…"),
    "lab": ("Checking the new version on {n} of your lab's images…",
            "Checking the new version on your lab's images…"),
    "int8": ("Making a faster copy for this computer's processor and checking it gives the same answers "
             "on {n} images…",
             "Making a faster copy for this computer's processor and checking it gives the same answers…"),
    "register": ("Adding the new version to your model versions…",) * 2,
}


def duration(seconds: float) -> str:
    """A run's length in words: '45 s', '2 min 5 s'."""
    s = int(round(max(0.0, seconds)))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def folder_classified(session, folder: str, version_id: int | None = None) -> dict[str, tuple[int, int]]:
    """How the images under ``folder`` were classified, per taxonomy: (images classified, of
    which outside the model's experience), by ``version_id`` where it classified them, else by
    the version of that taxonomy that classified the most."""
    outside = func.count(distinct(case((Prediction.out_of_distribution.is_(True), Prediction.image_id))))
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.taxonomy, func.count(distinct(Prediction.image_id)), outside)
        .join(Prediction, Prediction.model_version_id == ModelVersion.id)
        .join(ImageFile, ImageFile.image_id == Prediction.image_id)
        .where(under_folder(ImageFile.path, folder))
        .group_by(ModelVersion.id, ModelVersion.taxonomy)).all()
    out: dict[str, tuple[int, int]] = {}
    for vid, taxonomy, n, n_outside in sorted(rows, key=lambda r: (r[0] == version_id, r[2])):
        out[taxonomy] = (int(n), int(n_outside or 0))  # the preferred row comes last and wins
    return out


def reclassify_offer(folder: str | None, taxonomy: str,
                     classified: dict[str, tuple[int, int]]) -> tuple[bool, bool, str]:
    """(offered, ticked, text) of the re-classify check box: ticked only for a folder the new
    version applies to (classified by a version of its taxonomy) whose images are mostly inside
    the model's experience; offered unticked, with the reason, for one mostly outside it or never
    classified; never offered for a folder another kind of model classified."""
    if folder is None:
        return False, False, "Re-classify the open folder with it (no folder is open)"
    name = Path(folder).name
    if taxonomy in classified:
        n, n_outside = classified[taxonomy]
        if 2 * n_outside < n:
            return True, True, f"Re-classify {name} with it"
        most = "most" if 2 * n_outside > n else "half"
        return True, False, (f"Re-classify {name} with it (not ticked: {most} of its images, {n_outside:,} of "
                             f"{n:,}, are outside what this model knows)")
    if not classified:
        return True, False, f"Classify {name} with it (not classified yet)"
    return False, False, f"{name} was classified by another kind of model: the new version does not apply to it"


def plain_stage(p, n_reviewed: int | None, n_val: int | None) -> str | None:
    """The status line for a retrain Progress, in the reviewer's words (None: keep the last)."""
    ex = p.extra or {}
    images = f"your {n_reviewed} reviewed images" if n_reviewed is not None else "your reviewed images"
    if p.stage == "data":
        return "Collecting your reviewed labels…" if p.total is None else f"Found {p.message}."
    if p.stage == "load":
        return f"Reading your images ({p.done} of {p.total})…" if p.total else "Reading your images…"
    if p.stage == "train":
        if p.total is None or "loss" not in ex:
            return f"Getting ready: looking at {images}…"
        return f"Learning from {images} (step {p.done} of {p.total})"
    if p.stage == "validate":
        if ex.get("unit") == "step":
            return None  # during the steps: the step line stays
        on = f"your {n_val} validation images" if n_val is not None else "your validation images"
        return f"Checked the new version on {on} (round {ex.get('epoch', p.done)} of {ex.get('epochs', p.total)})"
    if p.stage == "compare":
        if "fold" in ex:  # the k-fold comparison (trainer/retrain.py): refits that leave images out
            return (f"Checking the new version on reviewed images it did not learn from "
                    f"(round {ex['fold']} of {ex['folds']})…")
        return "Comparing the new version with the current one on your reviewed images…"
    if p.stage == "package":
        if p.total and p.done >= p.total:
            return "Saved the new version."
        with_n, without = PACKAGE_STEPS.get(ex.get("step"), PACKAGE_STEPS["save"])
        return with_n.format(n=f"{ex['n_images']:,}") if ex.get("n_images") else without
    return p.message or None


class RetrainDialog(QDialog):
    runStarted = Signal()
    runFinished = Signal(object)  # the retrain summary (plain dict), or None after an error
    promoting = Signal(int)  # the version id Promote is about to make active
    promoted = Signal(int, bool)  # new active version id, re-classify the open folder

    def __init__(self, db, paths, parent=None, device: str | None = None, folder: str | os.PathLike | None = None,
                 version: dict | None = None, reviewer: str | None = None):
        super().__init__(parent)
        self.reviewer = reviewer  # who Promote records in the activation log
        self.setWindowTitle("Retrain from reviewed labels")
        self.setModal(False)
        self.resize(1300, 800)  # fits a 1360x860 window with every row of both tables in view
        self.db, self.paths = db, paths
        self.workers = Workers(self, light_threads=1)
        self.cancel_event: threading.Event | None = None
        self.task = None
        self.result: dict | None = None
        self._t0 = 0.0
        self._batch_x: list[float] = []
        self._batch_loss: list[float] = []
        self._n_reviewed: int | None = None  # training images of this run (from its data stage)
        self._n_val: int | None = None
        self.folder = None if folder is None else os.fspath(folder)
        self._build(device, version)
        self.refresh_data()

    # ------------------------------------------------------------------ construction
    def _build(self, device, version: dict | None) -> None:
        import pyqtgraph as pg

        from core.models.architectures import ARCHITECTURES  # heavy: imports torch

        if version is None:  # opened on its own (not from the window, which passes the version it shows)
            with self.db.session() as s:
                version = version_info(require_active_version(s))
        self.active = {"id": version["id"], "name": version["name"], "architecture": version["architecture"],
                       "taxonomy": version["taxonomy"], "ref": version.get("ref"), "card": dict(version.get("card") or {}),
                       "input_size": (version["card"] or {}).get("preprocessing", {}).get("input_size", 128)}

        self.data_table = table(0, 3, ["Class", "Reviewed", "of which validation"])
        self.data_note = QLabel()
        self.data_note.setWordWrap(True)
        dbox = QGroupBox("Training data (your reviewed labels)")
        dl = QVBoxLayout(dbox)
        dl.addWidget(self.data_table)
        dl.addWidget(self.data_note)

        self.arch = QComboBox()
        for name in sorted(ARCHITECTURES):
            self.arch.addItem(name)
        self.arch.setCurrentText(self.active["architecture"])
        self.finetune = QRadioButton(f"Fine-tune the active model ({self.active['name']})")
        self.scratch = QRadioButton("Train from scratch")
        self.finetune.setChecked(True)
        self.mode = QButtonGroup(self)
        self.mode.addButton(self.finetune)
        self.mode.addButton(self.scratch)
        self.finetune.toggled.connect(self._mode_changed)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 200)
        self.epochs.setValue(4)
        self.epochs.setToolTip("Epochs at least: a few reviewed images get more epochs, up to the minimum steps")
        self.min_steps = QSpinBox()
        self.min_steps.setRange(0, 5000)
        self.min_steps.setValue(60)
        self.min_steps.setToolTip("Optimiser steps at least, however few images are reviewed: with tens of "
                                  "corrections a fixed few epochs would hardly move the model")
        self.input_size = QSpinBox()
        self.input_size.setRange(32, 512)
        self.input_size.setSingleStep(16)
        self.input_size.setValue(int(self.active["input_size"]))
        self.device = QComboBox()
        self.device.addItem("auto (CUDA if available)", "auto")
        self.device.addItem("CPU", "cpu")

        for i, gpu in enumerate(probe_host().gpus):  # the runtime plan's view of this machine
            self.device.addItem(f"CUDA ({gpu.name})", f"cuda:{i}")
        if device:
            i = self.device.findData(device)
            if i >= 0:
                self.device.setCurrentIndex(i)
        self.base_data = QLineEdit()
        self.base_data.setPlaceholderText("optional: a folder of class folders added to the training side")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        brow = QHBoxLayout()
        brow.addWidget(self.base_data, 1)
        brow.addWidget(browse)
        sbox = QGroupBox("Run")
        form = QFormLayout(sbox)
        form.addRow(self.finetune)
        form.addRow(self.scratch)
        form.addRow("Architecture", self.arch)
        form.addRow("Input size (px)", self.input_size)
        form.addRow("Epochs (at least)", self.epochs)
        form.addRow("Steps (at least)", self.min_steps)
        form.addRow("Device", self.device)
        form.addRow("Base data", brow)

        self.start_btn = QPushButton("Start training")
        self.start_btn.setDefault(True)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.eta = QLabel("")

        # live curves
        pg.setConfigOptions(antialias=True, background="w", foreground="k")
        self.loss_plot = pg.PlotWidget(title="Loss")
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_plot.setLabel("bottom", "round")
        self.acc_plot = pg.PlotWidget(title="Accuracy")
        self.acc_plot.addLegend(offset=(-10, -10))
        self.acc_plot.setLabel("bottom", "round")
        self.acc_plot.setYRange(0, 1)
        for plot in (self.loss_plot, self.acc_plot):  # readable beside the results at the default size
            plot.setMinimumHeight(150)
        self.curve_batch = self.loss_plot.plot([], [], pen=pg.mkPen((180, 180, 180), width=1), name="batch")
        self.curve_train_loss = self.loss_plot.plot([], [], pen=pg.mkPen("b", width=2), symbol="o", symbolSize=6, name="train")
        self.curve_val_loss = self.loss_plot.plot([], [], pen=pg.mkPen("r", width=2), symbol="s", symbolSize=6, name="validation")
        self.curve_train_acc = self.acc_plot.plot([], [], pen=pg.mkPen("b", width=2), symbol="o", symbolSize=6, name="train")
        self.curve_val_acc = self.acc_plot.plot([], [], pen=pg.mkPen("r", width=2), symbol="s", symbolSize=6, name="validation")
        curves = QVBoxLayout()
        curves.addWidget(self.loss_plot)
        curves.addWidget(self.acc_plot)

        # results: the new and the active version on the same validation images
        self.comparison = ComparisonView()
        self.results, self.warning = self.comparison.tabs, self.comparison.warning

        # offered once the folder's predictions are read (refresh_data): only where the new version applies
        self.reclassify = QCheckBox(reclassify_offer(self.folder, self.active["taxonomy"], {})[2])
        self.reclassify.setChecked(False)
        self.reclassify.setEnabled(False)
        self.promote_btn = QPushButton("Promote new version")
        self.promote_btn.setEnabled(False)
        self.promote_btn.clicked.connect(self.promote)
        self.keep_btn = QPushButton("Keep current")
        self.keep_btn.setEnabled(False)
        self.keep_btn.clicked.connect(self.keep_current)
        close = QPushButton("Close")
        close.clicked.connect(self.close)

        top = QHBoxLayout()
        top.addWidget(dbox, 1)
        top.addWidget(sbox, 1)
        run_row = QHBoxLayout()
        run_row.addWidget(self.start_btn)
        run_row.addWidget(self.cancel_btn)
        run_row.addWidget(self.progress, 1)
        run_row.addWidget(self.eta)
        bottom = QHBoxLayout()
        bottom.addWidget(self.reclassify)
        bottom.addStretch(1)
        bottom.addWidget(self.promote_btn)
        bottom.addWidget(self.keep_btn)
        bottom.addWidget(close)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(run_row)
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        # the curves beside the comparison: both tables' rows stay in view at the default size
        middle = QHBoxLayout()
        middle.addLayout(curves, 2)
        middle.addWidget(self.comparison.widget, 3)
        lay.addLayout(middle, 1)
        lay.addLayout(bottom)
        self._mode_changed()

    def _mode_changed(self) -> None:
        scratch = self.scratch.isChecked()
        self.arch.setEnabled(scratch)
        self.input_size.setEnabled(scratch)
        if not scratch:
            self.arch.setCurrentText(self.active["architecture"])
            self.input_size.setValue(int(self.active["input_size"]))

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Base data: a folder of class folders")
        if d:
            self.base_data.setText(d)

    # ------------------------------------------------------------------ data summary
    def refresh_data(self) -> None:
        db, tax, folder, version_id = self.db, self.active["taxonomy"], self.folder, self.active["id"]
        card = {**self.active["card"], "taxonomy": tax}

        def summary():  # a cell model learns from the cells reviewed, as retrain will (learns_from_cells)
            return data_summary(db, tax, cells=learns_from_cells(db, card))

        self.workers.submit(summary, name="data summary", on_result=self._show_data, on_error=self._error)
        if folder is not None:
            def read():
                with db.session() as s:
                    return folder_classified(s, folder, version_id)

            self.workers.submit(read, name="open folder's models", on_result=self._offer_reclassify,
                                on_error=self._error)

    def _offer_reclassify(self, classified: dict[str, tuple[int, int]]) -> None:
        offered, ticked, text = reclassify_offer(self.folder, self.active["taxonomy"], classified)
        self.reclassify.setText(text)
        self.reclassify.setEnabled(offered)
        self.reclassify.setChecked(ticked)

    def _show_data(self, summary: dict) -> None:
        self.summary = summary
        per = summary["per_class"]
        # reviewed "Other" (no class fits): counted in the total, never a training target
        n_other = summary["n_reviewed"] - sum(n["reviewed"] for n in per.values())
        self.data_table.setRowCount(len(per) + 2)
        for r, (c, n) in enumerate(per.items()):
            set_cell(self.data_table, r, 0, c, Qt.AlignLeft | Qt.AlignVCenter)
            set_cell(self.data_table, r, 1, n["reviewed"])
            set_cell(self.data_table, r, 2, n["val"])
        set_cell(self.data_table, len(per), 0, "Other (no class fits)", Qt.AlignLeft | Qt.AlignVCenter)
        set_cell(self.data_table, len(per), 1, n_other)
        set_cell(self.data_table, len(per), 2, "—")
        what = "cells" if summary.get("cells") else "images"
        self.data_table.item(len(per), 0).setToolTip(f"{what.capitalize()} you called Other: not learnt as a class; "
                                                     "they teach the new version what lies outside its experience")
        set_cell(self.data_table, len(per) + 1, 0, "Total", Qt.AlignLeft | Qt.AlignVCenter)
        set_cell(self.data_table, len(per) + 1, 1, summary["n_reviewed"])
        set_cell(self.data_table, len(per) + 1, 2, sum(n["val"] for n in per.values()))
        fit_rows(self.data_table)
        if summary.get("cells"):
            self.data_note.setText(
                f"{summary['n_reviewed']} reviewed cells of {self.active['name']}, a cell model. Each cell takes its "
                f"field's fixed side (training or validation; {summary['n_unassigned']} not yet assigned, about 20% "
                "go to validation), so the cells of one field never straddle training and validation.")
        else:
            self.data_note.setText(
                f"{summary['n_reviewed']} reviewed images. Each gets a fixed side (training or validation) from its "
                f"content the first time it is used ({summary['n_unassigned']} not yet assigned, about 20% go to "
                "validation); near-duplicates stay together, so validation images never leak into training.")
        self.start_btn.setEnabled(self.task is None and summary["n_reviewed"] >= 4)
        if summary["n_reviewed"] < 4:
            self.status.setText(f"Review some {what} first (number keys in the "
                                f"{'Cells view' if summary.get('cells') else 'gallery'}): retraining learns from your "
                                "labels.")

    # ------------------------------------------------------------------ the run
    def config(self):
        scratch = self.scratch.isChecked()
        return RetrainConfig(epochs=self.epochs.value(), min_steps=self.min_steps.value(), from_scratch=scratch,
                             arch=self.arch.currentText() if scratch else None,
                             input_size=self.input_size.value() if scratch else None,
                             base_data=self.base_data.text().strip() or None, device=self.device.currentData())

    def start(self) -> None:
        if self.task is not None:
            return

        cfg = self.config()
        cancel = threading.Event()
        db, paths = self.db, self.paths
        self.cancel_event = cancel
        self.result = None
        self._t0 = time.monotonic()
        self._batch_x, self._batch_loss = [], []
        self._n_reviewed = self._n_val = None
        for c in (self.curve_batch, self.curve_train_loss, self.curve_val_loss, self.curve_train_acc, self.curve_val_acc):
            c.setData([], [])
        self.results.setEnabled(False)
        self.promote_btn.setEnabled(False)
        self.keep_btn.setEnabled(False)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText("Starting…")
        self.eta.setText("")
        parent = self.active.get("ref")  # the version this dialog shows, whichever is active for the other kind
        self.task = self.workers.submit(lambda: retrain(db, paths, cfg, cancel=cancel, parent=parent), name="retraining",
                                        pool="jobs", on_progress=self._on_progress, on_result=self._on_result,
                                        on_error=self._on_error)
        self.runStarted.emit()

    def cancel(self) -> None:
        if self.cancel_event is not None and not self.cancel_event.is_set():
            self.cancel_event.set()
            self.status.setText("Cancelling after this batch… (no model will be written)")

    def _on_progress(self, p) -> None:
        ex = p.extra or {}
        if p.stage == "data" and "data" in ex:
            self._n_reviewed, self._n_val = ex["data"].get("n_train_reviewed"), ex["data"].get("n_val")
        if p.stage != "validate":  # the bar follows the steps; a validation round does not move it back
            if p.total:
                self.progress.setRange(0, p.total)
                self.progress.setValue(p.done)
            else:  # a stage of unknown length: busy, never a 0% that does not move
                self.progress.setRange(0, 0)
        text = plain_stage(p, self._n_reviewed, self._n_val)
        if text:
            self.status.setText(text)
        if "eta_s" in ex:
            self.eta.setText(f"{fmt_eta(ex.get('eta_s'))} left")
        elif p.stage not in ("train", "validate"):  # after learning: no time left to tell, never a stale "0:00 left"
            self.eta.setText("")
        if p.stage == "train" and "loss" in ex:
            if ex.get("unit") == "step":  # the head refit (feature replay): one point per step
                self._batch_x.append(float(ex["step"]))
            else:
                self._batch_x.append(ex["epoch"] - 1 + ex["batch"] / max(1, ex["batches"]))
            self._batch_loss.append(ex["loss"])
            self.curve_batch.setData(self._batch_x, self._batch_loss)
        hist = ex.get("history")
        if hist and p.stage == "validate":
            self.show_history(hist)

    def show_history(self, hist: list[dict]) -> None:
        """The loss and accuracy curves of a run's history (per round, or per step of a head refit)."""
        unit = "step" if hist and hist[-1].get("unit") == "step" else "round over the training images"
        for plot in (self.loss_plot, self.acc_plot):
            plot.setLabel("bottom", unit)
        train = [h for h in hist if h.get("train_loss") is not None]
        self.curve_train_loss.setData([h["epoch"] for h in train], [h["train_loss"] for h in train])
        acc = [h for h in hist if h.get("train_accuracy") is not None]
        self.curve_train_acc.setData([h["epoch"] for h in acc], [h["train_accuracy"] for h in acc])
        val = [h for h in hist if h.get("val_loss") is not None]
        self.curve_val_loss.setData([h["epoch"] for h in val], [h["val_loss"] for h in val])
        self.curve_val_acc.setData([h["epoch"] for h in val], [h["val_accuracy"] for h in val])

    def _finish(self) -> None:
        self.task = None
        self.cancel_event = None
        self.cancel_btn.setEnabled(False)
        self.start_btn.setEnabled(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.eta.setText("")

    def _on_result(self, out: dict) -> None:
        self._finish()
        self.result = out
        if out.get("history"):  # the whole run's curves, whatever progress arrived
            self.show_history(out["history"])
        if out["status"] != "completed":
            self.status.setText("Cancelled: no model version was written.")
            self.runFinished.emit(out)
            return
        learning = out.get("train_seconds") or 0.0
        whole = out.get("seconds") or (time.monotonic() - self._t0)  # the run's start to its end
        d = out["data"]
        used = ", ".join(f"{c} {n['train'] + n['base']}" for c, n in d["per_class"].items())
        few = (f" Too few reviewed images (under {d['min_per_class']}) of {', '.join(d['too_few'])}: "
               "the new version learns little about them." if d.get("too_few") else "")
        where = "the graphics card" if str(out.get("device", "")).startswith("cuda") else "this computer's processor"
        self.status.setText(f"Done in {duration(whole)} on {where} (learning took {duration(learning)}, then "
                            f"checking and saving): new version {out['version']}, "
                            f"not active yet. It learnt from {d['n_train']} images ({used}) and was checked on "
                            f"{d['n_val']} others.{few}")
        self.show_comparison(out.get("comparison"), out["parent"], out["version"])
        self.promote_btn.setEnabled(True)
        self.keep_btn.setEnabled(True)
        self.refresh_data()
        self.runFinished.emit(out)

    def _on_error(self, message: str) -> None:
        self._finish()
        self._error(message)
        self.runFinished.emit(None)

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.status.setText(f"⚠ {message}")

    def show_comparison(self, cmp: dict | None, old_name: str, new_name: str) -> None:
        self.comparison.show(cmp, old_name, new_name)

    # ------------------------------------------------------------------ decisions
    def promote(self) -> None:
        if not self.result or self.result.get("status") != "completed":
            return

        verdict, why = promotion_advice(self.result.get("comparison"))
        if why is not None:
            title = "The new version is worse" if verdict == "worse" else "Not shown to be better"
            box = QMessageBox(QMessageBox.Warning if verdict == "worse" else QMessageBox.Question, title,
                              f"{why[0].upper()}{why[1:]}.\n\nPromote {self.result['version']} anyway?",
                              QMessageBox.Yes | QMessageBox.No, self)
            box.setDefaultButton(QMessageBox.No)
            if box.exec() != QMessageBox.Yes:
                self.status.setText(f"Not promoted: {why}.")
                return
        db, name, who = self.db, self.result["version"], self.reviewer
        self.promote_btn.setEnabled(False)
        self.keep_btn.setEnabled(False)
        self.promoting.emit(int(self.result["version_id"]))
        self.workers.submit(lambda: promote(db, name, who), name="promote", on_result=self._promoted, on_error=self._error)

    def _promoted(self, entry: dict) -> None:
        self.promote_btn.setEnabled(False)
        self.keep_btn.setEnabled(False)
        self.status.setText(f"{self.result['version']} is now the active model (roll back any time in Model versions).")
        self.promoted.emit(entry["id"], self.reclassify.isChecked() and self.reclassify.isEnabled())

    def keep_current(self) -> None:
        self.promote_btn.setEnabled(False)
        self.keep_btn.setEnabled(False)
        if self.result:
            self.status.setText(f"Kept the active model; {self.result['version']} stays in the registry.")

    def closeEvent(self, e) -> None:
        self.cancel()
        self.workers.cancel_all()
        self.workers.wait(30000)
        super().closeEvent(e)
