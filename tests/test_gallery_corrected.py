"""The report's "Corrected by the reviewer": a label that differs from a class the reviewer was
shown (the model sure and inside its experience), the rule cells already follow."""
from __future__ import annotations

from core.app.sample import generate
from core.imaging.scan import images_under, scan
from core.jobs import run_job
from core.models.registry import active_version
from core.review.gallery import GalleryFilter, ordered_ids
from core.review.labels import record_labels
from core.storage.orm import Prediction


def test_corrected_counts_only_labels_that_differ_from_a_class_shown(db, tmp_path):
    generate(tmp_path / "case", n_per_class=2, seed=3)
    run_job(scan(db, tmp_path / "case"))
    with db.session() as s:
        version = active_version(s)
        vid, classes = version.id, version.card["classes"]
        ids = [image_id for image_id, _ in images_under(s, tmp_path / "case")][:5]
        # sure and inside / uncertain / outside / sure and inside / sure and inside
        flags = [(False, False), (True, False), (False, True), (False, False), (False, False)]
        for image_id, (uncertain, outside) in zip(ids, flags):
            s.add(Prediction(image_id=image_id, model_version_id=vid, label=classes[0], confidence=0.9, entropy=0.3,
                             probabilities=[0.9] + [0.1 / (len(classes) - 1)] * (len(classes) - 1),
                             uncertain=uncertain, out_of_distribution=outside))
    with db.session() as s:
        record_labels(s, ids[:3], classes[1], "Ana Tester")  # differs from the model on all three
        record_labels(s, [ids[3]], classes[0], "Ana Tester")  # agrees
        record_labels(s, [ids[4]], "Other", "Ana Tester")  # no class fits: its own section
    with db.session() as s:
        corrected = ordered_ids(s, tmp_path / "case", vid, GalleryFilter(corrected=True, sort="name"))
        disagree = ordered_ids(s, tmp_path / "case", vid, GalleryFilter(disagreement=True, sort="name"))
    assert corrected == [ids[0]]  # the uncertain and the outside image showed no class to correct
    assert set(disagree) == set(ids[:3])  # the gallery's filter still shows every difference
