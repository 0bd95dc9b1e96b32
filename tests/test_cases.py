"""Cases (core/review/cases.py and ``hemascan case``): a folder's name until the lab renames it."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.review.cases import CASE_NAME_MAX, case_name, rename_case
from core.storage import Case, Database


@pytest.fixture
def database(db_url):
    db = Database(db_url)
    yield db
    db.dispose()


def test_a_case_is_called_by_its_folder_until_renamed(database, tmp_path):
    folder = tmp_path / "2024-117 blood"
    with database.session() as s:
        assert case_name(s, folder) == "2024-117 blood"
        assert case_name(s, str(folder) + "/") == "2024-117 blood"
    with database.session() as s:
        assert rename_case(s, folder, "  Patient 17, day 3  ") == "Patient 17, day 3"
    with database.session() as s:  # the same folder however it is written; another folder is untouched
        assert case_name(s, str(folder) + "/") == "Patient 17, day 3"
        assert case_name(s, tmp_path / "2024-118") == "2024-118"
    with database.session() as s:
        rename_case(s, folder, "Patient 17, day 4")
    with database.session() as s:
        assert case_name(s, folder) == "Patient 17, day 4"
        assert s.scalar(select(func.count(Case.id))) == 1


@pytest.mark.parametrize("name, match", [("", "cannot be empty"), ("   ", "cannot be empty"),
                                         ("x" * (CASE_NAME_MAX + 1), "at most 200"),
                                         ("two\nlines", "printable")])
def test_a_bad_name_is_refused_and_the_old_one_kept(database, tmp_path, name, match):
    with database.session() as s:
        rename_case(s, tmp_path, "Case A")
    with database.session() as s, pytest.raises(ValueError, match=match):
        rename_case(s, tmp_path, name)
    with database.session() as s:
        assert case_name(s, tmp_path) == "Case A"


def test_the_longest_name_fits_the_column(database, tmp_path):
    with database.session() as s:
        rename_case(s, tmp_path, "é" * CASE_NAME_MAX)
    with database.session() as s:
        assert case_name(s, tmp_path) == "é" * CASE_NAME_MAX


def test_case_command_prints_and_renames(cli, tmp_path):
    folder = tmp_path / "smear-42"
    folder.mkdir()
    assert cli("case", folder) == (0, "smear-42\n", "")
    rc, out, _ = cli("case", folder, "--rename", "Ward 3 / bed 7")
    assert rc == 0 and out == "Ward 3 / bed 7\n"
    assert cli("case", folder)[1] == "Ward 3 / bed 7\n"
    # a bad name: tests/test_bad_options.py (refused before any work, exit 2, one sentence)
