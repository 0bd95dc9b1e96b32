"""Cell labels (core/review/cell_labels.py): the same append-only audit as image labels, on a
real SQLite file and on PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.models.taxonomy import OTHER
from core.review.cell_labels import cell_history, latest_cell_events, record_cell_labels
from core.storage import CellLabelEvent, Database

from .cellfixtures import add_cells, add_image


@pytest.fixture
def cells(db_url):
    db = Database(db_url)
    with db.session() as s:
        ids = add_cells(s, add_image(s, "field"), [(10, 10, 60, 60), (100, 10, 150, 60), (10, 100, 60, 150)])
    yield db, ids
    db.dispose()


def _n_events(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count(CellLabelEvent.id)))


def test_the_latest_event_is_the_label_and_history_keeps_every_one(cells):
    db, (a, b, c) = cells
    with db.session() as s:
        record_cell_labels(s, [a, b], "ALL", "Dr. Ada", taxonomy="all_vs_normal")
    with db.session() as s:
        record_cell_labels(s, [a], "Normal", "Dr. Ben", taxonomy="all_vs_normal")
    with db.session() as s:
        latest = latest_cell_events(s)
        assert {k: (v.label, v.reviewer) for k, v in latest.items()} == {a: ("Normal", "Dr. Ben"),
                                                                         b: ("ALL", "Dr. Ada")}
        assert latest_cell_events(s, [b, c]).keys() == {b}
        assert latest_cell_events(s, []) == {}
        hist = cell_history(s, a)
        assert [(e.label, e.previous_label, e.reviewer, e.source) for e in hist] == [
            ("ALL", None, "Dr. Ada", "human"), ("Normal", "ALL", "Dr. Ben", "human")]
        assert cell_history(s, c) == []


def test_an_undo_is_a_new_event_and_nothing_is_deleted(cells):
    db, (a, _, _) = cells
    with db.session() as s:
        record_cell_labels(s, [a], "ALL", "Dr. Ada", taxonomy="all_vs_normal")
    with db.session() as s:
        record_cell_labels(s, [a], "Normal", "Dr. Ada", taxonomy="all_vs_normal")
    with db.session() as s:  # undo: give back the previous label
        prev = latest_cell_events(s, [a])[a].previous_label
        record_cell_labels(s, [a], prev, "Dr. Ada", taxonomy="all_vs_normal")
    with db.session() as s:  # undo the first label too: cleared, not deleted
        record_cell_labels(s, [a], None, "Dr. Ada", taxonomy="all_vs_normal")
    with db.session() as s:
        assert [e.label for e in cell_history(s, a)] == ["ALL", "Normal", "ALL", None]
        assert latest_cell_events(s, [a])[a].label is None
    assert _n_events(db) == 4


def test_other_not_assessable_is_a_label_of_every_taxonomy_with_a_note(cells):
    db, (a, b, _) = cells
    with db.session() as s:
        record_cell_labels(s, [a], OTHER, "Dr. Ada", taxonomy="all_vs_normal", note="smudge cell")
        record_cell_labels(s, [b], OTHER, "Dr. Ada", taxonomy="all_subtype")
    with db.session() as s:
        ev = latest_cell_events(s, [a, b])
        assert (ev[a].label, ev[a].note, ev[a].taxonomy) == (OTHER, "smudge cell", "all_vs_normal")
        assert (ev[b].label, ev[b].note) == (OTHER, None)


@pytest.mark.parametrize("label, taxonomy, source, match", [
    ("Smudge", "all_vs_normal", "human", "not a class"),
    ("Pro-B", "all_vs_normal", "human", "not a class"),     # a class of another taxonomy
    ("ALL", "no_such_taxonomy", "human", "unknown taxonomy"),
    ("ALL", "all_vs_normal", "guess", "unknown label source"),
])
def test_bad_labels_are_refused_and_nothing_is_written(cells, label, taxonomy, source, match):
    db, (a, _, _) = cells
    with db.session() as s, pytest.raises(ValueError, match=match):
        record_cell_labels(s, [a], label, "Dr. Ada", taxonomy=taxonomy, source=source)
    assert _n_events(db) == 0


@pytest.mark.parametrize("reviewer, match", [("", "reviewer name is needed"), ("  ", "reviewer name is needed"),
                                             ("root", "computer account"), ("x" * 129, "at most 128")])
def test_a_person_must_give_a_human_label(cells, reviewer, match):
    db, (a, _, _) = cells
    with db.session() as s, pytest.raises(ValueError, match=match):
        record_cell_labels(s, [a], "ALL", reviewer, taxonomy="all_vs_normal")
    assert _n_events(db) == 0
    with db.session() as s:  # imported labels name the account that imported them, as image labels do
        record_cell_labels(s, [a], "ALL", "root", taxonomy="all_vs_normal", source="dataset")
    assert _n_events(db) == 1


def test_a_cell_given_twice_in_one_call_gets_one_event(cells):
    db, (a, b, _) = cells
    with db.session() as s:
        events = record_cell_labels(s, [a, a, b], "ALL", "Dr. Ada", taxonomy="all_vs_normal")
        assert [e.cell_id for e in events] == [a, b]
    assert _n_events(db) == 2
