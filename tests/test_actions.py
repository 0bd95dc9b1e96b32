"""One table of actions (desktop/actions.py): the menus, toolbar, buttons, shortcuts, the
Help dialog and the README's key table all come from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from desktop import actions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_readme_key_table_is_the_action_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- keys:[^>]*-->\n(.*?)\n<!-- /keys -->", readme, re.S)
    assert m, "README lost its generated key table"
    assert m.group(1).strip() == actions.markdown_table(actions.default_classes()), \
        "README's key table differs from desktop/actions.py: paste `python -m desktop.actions`"


def _handler(owner, dotted: str):
    """A handler of the table on the window's class: a method, or a method of one of its parts
    ("reviewing.undo": the class the window annotates ``reviewing`` with)."""
    import typing

    *parts, name = dotted.split(".")
    for part in parts:
        owner = typing.get_type_hints(owner)[part]
    return getattr(owner, name, None)


def test_every_handler_exists_and_every_enabled_when_is_known():
    from desktop.mainwindow import MainWindow

    for spec in (*actions.ACTIONS, *actions.class_specs(["a", "b"])):
        assert spec.handler is None or callable(_handler(MainWindow, spec.handler)), spec.name
        assert spec.enabled is None or spec.enabled in actions.ENABLED, spec.name
        assert spec.menu is None or spec.menu in actions.MENUS


def _window(qtbot, paths):
    from PySide6.QtCore import QSettings

    from desktop.mainwindow import MainWindow

    settings = QSettings(str(paths.data_dir / "t.ini"), QSettings.IniFormat)
    settings.setValue("reviewer", "Ana Ruiz")
    w = MainWindow(paths, settings=settings)
    qtbot.addWidget(w)
    return w


def test_the_window_is_built_from_the_table_with_no_key_twice(qtbot, paths):
    from PySide6.QtGui import QKeySequence

    w = _window(qtbot, paths)
    table = {spec.name: a for spec, a in w.specs.values()}
    in_table = set(map(id, table.values()))
    menu_actions = [a for m in w.menuBar().actions() for a in m.menu().actions()
                    if not a.isSeparator() and a.menu() is None]
    assert menu_actions and all(id(a) in in_table for a in menu_actions), \
        [a.text() for a in menu_actions if id(a) not in in_table]
    toolbar = [a for a in w.findChild(type(w.addToolBar("x")), "mainToolbar").actions() if not a.isSeparator()]
    assert [a.text() for a in toolbar] == [s.text for s in actions.ACTIONS if s.toolbar]
    # two actions on one key make Qt's shortcut ambiguous: the key then does nothing at all
    keys = [k.toString(QKeySequence.PortableText) for a in w.actions() for k in a.shortcuts()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    classes = w.version["classes"]
    assert [w.a_class_1.text(), w.a_class_4.text()] == [f"1  {classes[0]}", f"4  {classes[3]}"]
    for spec in actions.ACTIONS:  # every key the help lists is a key of the window
        if spec.handler:
            assert [QKeySequence(k).toString(QKeySequence.PortableText) for k in spec.keys] == \
                [k.toString(QKeySequence.PortableText) for k in getattr(w, f"a_{spec.name}").shortcuts()]
    help_html = actions.html_table(classes)
    assert all(f"<b>{k}</b>" in help_html for s in actions.ACTIONS if s.help and not s.help_keys for k in s.keys)


def test_enabled_when_follows_the_state(qtbot, paths, sample_folder):
    w = _window(qtbot, paths)
    assert not w.a_classify.isEnabled() and not w.a_csv.isEnabled() and not w.a_cancel.isEnabled()
    assert not w.review_buttons["accept"].isEnabled() and not w.review_buttons["undo"].isEnabled()
    assert w.a_accept.isEnabled()  # a live key: pressed now it says why instead of doing nothing
    with qtbot.waitSignal(w.jobFinished, timeout=120_000):
        w.open_folder(sample_folder)
    assert w.a_classify.isEnabled() and w.a_csv.isEnabled() and not w.a_cancel.isEnabled()
    assert w.review_buttons["accept"].isEnabled() and w.review_buttons["class_1"].isEnabled()
    w.a_class_2.trigger()
    assert w.review_buttons["undo"].isEnabled() and not w.review_buttons["redo"].isEnabled()
    w.a_undo.trigger()
    assert w.review_buttons["redo"].isEnabled()
