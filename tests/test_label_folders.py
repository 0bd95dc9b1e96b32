"""``import-labels`` reads class folders in the one taxonomy they share, as training reads them."""
from __future__ import annotations

from sqlalchemy import select

from core.models.taxonomy import shared_taxonomy
from core.storage import LabelEvent

from .test_evaluate_classes import class_folders


def test_shared_taxonomy_is_the_first_every_recognised_folder_belongs_to():
    assert shared_taxonomy(["all", "hem"]) == "all_vs_normal"
    assert shared_taxonomy(["all", "lymphocyte", "notes"]) == "wbc_differential"  # unknown names ignored
    assert shared_taxonomy(["Benign", "hem"]) is None  # no taxonomy has both
    assert shared_taxonomy(["notes"]) is None
    assert shared_taxonomy(["all", "hem"], "wbc_differential") == "wbc_differential"  # named: that one


def _labels(db):
    with db.session() as s:
        return sorted(set(s.execute(select(LabelEvent.taxonomy, LabelEvent.label)).all()))


def test_folders_sharing_one_taxonomy_are_imported_in_it(cli, db, tmp_path):
    # "all" alone means ALL (all_vs_normal), but beside "lymphocyte" it is the differential's Blast
    data = class_folders(tmp_path / "cells", {"all": 3, "lymphocyte": 2})
    rc, out, err = cli("import-labels", data, "--reviewer", "dr.b")
    assert rc == 0, err
    assert _labels(db) == [("wbc_differential", "Blast"), ("wbc_differential", "Lymphocyte")]


def test_a_named_taxonomy_maps_every_folder_through_it(cli, db, tmp_path):
    data = class_folders(tmp_path / "cnmc", {"all": 3, "hem": 2})
    rc, out, err = cli("import-labels", data, "--reviewer", "dr.b", "--taxonomy", "wbc_differential")
    assert rc == 0, err
    assert _labels(db) == [("wbc_differential", "Blast"), ("wbc_differential", "Lymphocyte")]
