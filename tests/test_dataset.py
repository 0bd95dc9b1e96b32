"""On the real share (skipped where ../shared is absent)."""
import csv

import pytest
from sqlalchemy import func, select

from core.storage import ModelVersion, Prediction
from core.inference.predict import classify
from core.jobs import run_job

pytestmark = pytest.mark.dataset


@pytest.mark.slow
def test_classify_whole_share_and_export(db, paths, dataset_dir, tmp_path):
    from core.review.export import export_csv

    s = run_job(classify(db, paths, dataset_dir))
    assert s.scan.n_files == 2770 and s.scan.n_errors == 0 and s.n_errors == 0
    with db.session() as ses:
        n_images = ses.scalar(select(func.count(Prediction.id)).join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                              .where(ModelVersion.input_kind == "field"))  # the cell model's crops apart
    # byte-identical duplicates are one image (one prediction) behind several files
    assert n_images == s.n_predicted and 2600 < n_images <= 2770
    out = tmp_path / "share.csv"
    assert export_csv(db, out, folder=dataset_dir) == 2770
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2770 and all(r["predicted_label"] for r in rows)
    assert run_job(classify(db, paths, dataset_dir)).n_todo == 0
