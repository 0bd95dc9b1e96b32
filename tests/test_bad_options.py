"""Every option is checked before work starts: each invocation an attack found giving a
traceback (or doing something absurd) is one sentence and a documented exit code now
(2: bad input or usage, README), never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import hemascan_cmd, subprocess_env

LONG_NAME = "x" * 300


@pytest.fixture
def run(cli, capsys):
    def go(*argv):
        try:
            rc, out, err = cli(*argv)
        except SystemExit as exc:
            out, err = capsys.readouterr()
            rc = exc.code
        return rc, out, err

    return go


def one_sentence(rc: int, err: str, expected_code: int = 2, *words: str) -> str:
    assert rc == expected_code, err
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(errors) == 1, err  # one sentence (argparse adds its usage line above it)
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A small class-folder dataset, the same with one image per class, and an empty folder."""
    from core.app.sample import generate

    base = tmp_path_factory.mktemp("options")
    sample = base / "sample"
    generate(sample, n_per_class=2, seed=5)
    one = base / "one"
    for d in sorted(p for p in sample.iterdir() if p.is_dir()):
        (one / d.name).mkdir(parents=True)
        f = sorted(d.iterdir())[0]
        (one / d.name / f.name).write_bytes(f.read_bytes())
    (base / "empty").mkdir()
    return {"sample": str(sample), "one": str(one), "empty": str(base / "empty")}


# (argv with {sample}/{one}/{empty}/{tmp} placeholders, words the sentence must hold)
BAD_OPTIONS = [
    (["worker", "--once", "--lease", "nan"], "--lease"),
    (["worker", "--once", "--lease", "inf"], "--lease"),
    (["worker", "--once", "--lease", "1e308"], "--lease"),
    (["worker", "--once", "--lease", "0"], "--lease"),
    (["worker", "--once", "--claim", "1e20"], "--claim"),
    (["worker", "--once", "--claim", "100000000000000000000"], "--claim"),
    (["worker", "--once", "--poll", "-1"], "--poll"),
    (["worker", "--once", "--name", LONG_NAME], "--name"),
    (["export", "-o", ""], "--output"),
    (["export", "--format", "cells", "-o", "{tmp}/cells.csv", "--model", ""], "--model"),
    (["case", "{tmp}", "--rename", ""], "--rename"),
    (["case", "{tmp}", "--rename", "x" * 201], "--rename"),
    (["case", "{tmp}", "--rename", "two\nlines"], "--rename"),
    (["sample", "{tmp}/s", "--size", "0"], "--size"),
    (["sample", "{tmp}/s", "--size", "-1"], "--size"),
    (["sample", "{tmp}/s", "--size", "100000"], "--size"),
    (["sample", "{tmp}/s", "--per-class", "1000000000"], "--per-class"),
    (["sample", "{tmp}/s", "--per-class", "0"], "--per-class"),
    (["sample", "{tmp}/s", "--seed", "-1"], "--seed"),
    (["demo", "--per-class", "-5"], "--per-class"),
    (["--db-url", "postgresql+psycopg://u@[::1", "scan", "{sample}"], "--db-url"),
    (["--db-url", "", "scan", "{sample}"], "--db-url"),
    (["--data-dir", "", "queue"], "--data-dir"),
    (["submit", ""], "folder"),
    (["submit", "{sample}", "--by", LONG_NAME], "--by"),
    (["scan", ""], "folder"),
    (["classify", "{sample}", "--batch-size", "-1"], "--batch-size"),
    (["classify", "{sample}", "--batch-size", "0"], "--batch-size"),
    (["classify", "{sample}", "--workers", "-2"], "--workers"),
    (["classify", "{sample}", "--images", "slides"], "--images"),
    (["import-labels", "{sample}", "--reviewer", LONG_NAME], "--reviewer"),
    (["queue", ""], "folder"),
    (["models", "export", "some-model", ""], "file"),
    (["gui", ""], "folder"),
    (["train", "--data", "{tmp}/nowhere"], "--data"),
    (["train", "--data", "{sample}", "--epochs", "0"], "--epochs"),
    (["train", "--data", "{sample}", "--fold", "99"], "--fold"),
    (["train", "--data", "{sample}", "--corner-mask", "abc"], "--corner-mask"),
    (["train", "--data", "{sample}", "--corner-mask", "0.1,2"], "--corner-mask"),
    (["train", "--data", "{sample}", "--input-size", "0"], "--input-size"),
    (["train", "--data", "{sample}", "--batch-size", "-4"], "--batch-size"),
    (["train", "--data", "{sample}", "--lr", "nan"], "--lr"),
    (["evaluate", "--data", "{sample}", "--fold", "-1"], "--fold"),
    (["compare", "--data", "{sample}", "--epochs", "0"], "--epochs"),
    (["retrain", "--epochs", "0"], "--epochs"),
    (["retrain", "--val-fraction", "1.5"], "--val-fraction"),
    (["retrain", "--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize("argv,words", BAD_OPTIONS, ids=[" ".join(a)[:60] for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_sentence_and_exit_2(run, folders, tmp_path, data_dir, argv, words):
    argv = [a.format(tmp=tmp_path, **folders) for a in argv]
    rc, out, err = run(*argv)
    one_sentence(rc, err, 2, words)
    assert not (data_dir / "hemascan.sqlite3").exists()  # refused before any work: not even the database


def test_train_on_an_empty_folder_is_one_sentence(run, folders):
    rc, _, err = run("train", "--data", folders["empty"], "--arch", "seed_cnn3")
    one_sentence(rc, err, 2, "no class folders")


def test_train_with_one_image_per_class_is_refused_before_training(run, folders, data_dir):
    rc, out, err = run("train", "--data", folders["one"], "--arch", "seed_cnn3", "--epochs", "1",
                       "--input-size", "32", "--no-int8", "--no-register")
    one_sentence(rc, err, 2, "too few images to train on")
    assert "epoch" not in out and not list((data_dir / "runs").glob("*/package"))  # nothing was trained


def test_bad_variable_stops_a_worker_service_at_once(tmp_path):
    """A service whose unit file has a typo (HEMASCAN_WORKER_LEASE_S=abc) says so and exits 2,
    rather than crash-looping with a traceback."""
    for bad in ("nan", "abc"):
        proc = subprocess.run([*hemascan_cmd(), "-q", "worker", "--once"],
                              env=subprocess_env(tmp_path / "data", HEMASCAN_WORKER_LEASE_S=bad),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"hemascan: error: the environment variable HEMASCAN_WORKER_LEASE_S={bad!r} cannot be used: "
            + ("must be a finite number" if bad == "nan" else "must be a valid number")]


def test_scan_follows_no_link_out_of_the_folder(cli, tmp_path):
    from tests.badfiles import jpeg_bytes

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "far.jpg").write_bytes(jpeg_bytes(1))
    folder = tmp_path / "smears"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.jpg").write_bytes(jpeg_bytes(2))
    os.symlink(outside, folder / "link-out")
    os.symlink(folder / "a", folder / "link-in")  # inside the folder: followed (once: same folder)
    rc, out, err = cli("scan", folder)
    assert rc == 0 and "Traceback" not in err
    assert "1 image files" in out and "link-out: a link to a folder outside the scanned folder: not followed" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_scan_of_proc_self_does_not_walk_the_file_system(cli):
    rc, out, err = cli("scan", "/proc/self")  # /proc/self/root is "/"
    assert rc == 0 and "Traceback" not in err
    assert "/proc/self/root: a link to a folder outside the scanned folder" in out


@pytest.mark.parametrize("argv", [
    ("train", "--data", "{folder}", "--name", "../../evil", "--epochs", "1"),
    ("train", "--data", "{folder}", "--name", "x" * 300, "--epochs", "1"),
    ("retrain", "--name", "../outside"),
])
def test_a_bad_model_name_is_refused_before_training(argv, run, tmp_path):
    """The name becomes a registry folder: it used to be checked only after training had run
    (and the trainer's checkpoints had been written outside the data directory)."""
    folder = tmp_path / "data"
    folder.mkdir()
    code, out, err = run(*(a.replace("{folder}", str(folder)) for a in argv))
    assert code == 2 and "model name" in err and "is not allowed" in err and "Traceback" not in err
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("value", ["scale=nan", "scale=inf", "hue=-0.1", "grayscale_p=1.5", "flips=maybe",
                                   "rotate_degrees=1e9"])
def test_augment_values_are_checked_before_training(value, run, tmp_path):
    """`--augment scale=nan` trained on NaN-zoomed images and wrote NaN (not JSON) into the card."""
    folder = tmp_path / "data"
    folder.mkdir()
    code, out, err = run("train", "--data", str(folder), "--epochs", "1", "--augment", value)
    assert code == 2 and "--augment" in err and "Traceback" not in err
