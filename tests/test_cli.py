import csv

from sqlalchemy import func, select

from core.storage import LabelEvent, ModelVersion, Prediction


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sample_import_classify_export(cli, tmp_path, db):
    folder = tmp_path / "lab"
    rc, out, _ = cli("sample", folder, "--per-class", 3, "--seed", 7)
    assert rc == 0 and "12 synthetic" in out

    rc, out, _ = cli("import-labels", folder, "--reviewer", "dr.b")
    assert rc == 0 and "labels recorded: 12" in out
    rc, out, _ = cli("import-labels", folder)
    assert rc == 0 and "labels recorded: 0" in out and "12 already" in out

    rc, out, _ = cli("classify", folder, "--device", "cpu")
    assert rc == 0 and "12 predicted" in out and "does not replace diagnosis" in out
    rc, out, _ = cli("classify", folder)
    assert rc == 0 and "0 predicted" in out  # nothing left for the active model

    with db.session() as s:
        # the field model's (the active cell model also classifies the images judged single-cell crops)
        assert s.scalar(select(func.count(Prediction.id)).join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                        .where(ModelVersion.input_kind == "field")) == 12
        assert s.scalar(select(func.count(LabelEvent.id))) == 12
        assert set(s.scalars(select(LabelEvent.source))) == {"dataset"}

    out_csv = tmp_path / "out.csv"
    rc, out, _ = cli("export", "--format", "csv", "--output", out_csv)
    assert rc == 0
    rows = read_csv(out_csv)
    assert len(rows) == 12
    row = rows[0]
    for key in ("path", "sha256", "predicted_label", "confidence", "p_Benign", "p_Pro-B",
                "reviewed_label", "reviewer", "reviewed_at", "model_version"):
        assert key in row
    by_folder = {r["path"].split("/")[-2]: r["reviewed_label"] for r in rows}
    assert by_folder == {"Benign": "Benign", "Early": "Early Pre-B", "Pre": "Pre-B", "Pro": "Pro-B"}
    assert all(r["reviewer"] == "dr.b" and r["model_version"] for r in rows)
    assert {r["runtime"] for r in rows} == {"openvino int8 cpu"}  # each prediction says how it was computed
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in ("Benign", "Early Pre-B", "Pre-B", "Pro-B")]
        assert abs(sum(probs) - 1) < 1e-3 and abs(max(probs) - float(r["confidence"])) < 1e-3


def test_models_list_and_activate(cli):
    rc, out, _ = cli("models", "list")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("*") and "all-subtype" in lines[0] and lines[0].split()[2] == "field"
    differential = next(line for line in lines if "wbc-differential" in line)
    assert differential.startswith("*") and differential.split()[2] == "cell"  # shipped: the active cell model
    binary = next(line for line in lines if "all-vs-normal" in line)
    assert not binary.startswith("*") and binary.split()[0] == "all-vs-normal-seed-cnn3-v1"  # bundled, not active
    name = binary.split()[0]
    rc, out, _ = cli("models", "activate", name)
    assert rc == 0 and f"{name} is now the active cell model" in out
    rc, out, _ = cli("models", "list")
    assert [line.split()[1] for line in out.splitlines() if line.startswith("*")] == [lines[0].split()[1], name]
    rc, _, err = cli("models", "activate", "no-such-model")
    assert rc == 2 and "no model version 'no-such-model'" in err and "Traceback" not in err


def test_missing_folder_is_a_clear_error(cli, tmp_path):
    rc, _, err = cli("classify", tmp_path / "nope")
    assert rc == 2 and "not a folder" in err and "Traceback" not in err


def test_cuda_request_without_gpu_is_a_clear_error(cli, sample_folder):
    import pytest

    from core.inference.runtime import probe_host

    if probe_host().gpus:
        pytest.skip("this machine has a CUDA GPU: the request is valid here")
    rc, _, err = cli("classify", sample_folder, "--device", "cuda")
    assert rc == 2 and "no CUDA GPU" in err


def test_data_dir_option_overrides_environment(cli, tmp_path, sample_folder):
    other = tmp_path / "other-lab"
    rc, _, _ = cli("--data-dir", other, "scan", sample_folder)
    assert rc == 0 and (other / "hemascan.sqlite3").is_file()


def test_demo_runs_on_the_embedded_default(cli, data_dir):
    rc, out, _ = cli("demo", "--per-class", 2)
    assert rc == 0 and "8 predicted" in out
    assert (data_dir / "demo-predictions.csv").is_file()
    assert len(read_csv(data_dir / "demo-predictions.csv")) == 8


def test_cli_starts_without_importing_torch():
    """Start-up stays fast: building the parser (all plugins) must not import torch."""
    import subprocess
    import sys

    code = ("import sys; from core.app.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "PySide6" not in out, out


def test_unknown_export_format_is_a_clear_error(cli, tmp_path):
    rc, _, err = cli("export", "--format", "xlsx", "-o", tmp_path / "x")
    assert rc == 2 and "unknown export format" in err
