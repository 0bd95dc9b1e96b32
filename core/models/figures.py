"""A model card's headline figures with their basis, in words: a figure is never shown
without what it was measured on (a held-out test set of a public dataset, or a handful of
reviewed validation images), and a retrained version keeps its parent's figures beside its
own (``metrics.parent``), so the test figures of the trained model are never lost."""
from __future__ import annotations

from typing import Any

MAX_ANCESTORS = 8  # figures of earlier versions kept in a card: a long chain of retrains stays small


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def own_figures(card: dict) -> dict | None:
    """The card's own headline figures: {"name", "accuracy", "macro_f1", "recall" (class ->
    recall), "n", "kind" ("test" | "validation"), "basis" (words)}; None when it has none."""
    metrics = card.get("metrics") or {}
    if not isinstance(metrics, dict):
        return None
    data = card.get("training_data") if isinstance(card.get("training_data"), dict) else {}
    split = metrics.get("split") if isinstance(metrics.get("split"), dict) else {}
    split = split or (data.get("split") if isinstance(data.get("split"), dict) else {})
    for section in ("as_is", "test"):  # the trainer's held-out test metrics
        m = metrics.get(section)
        if isinstance(m, dict) and _number(m.get("accuracy")):
            n = m.get("n") or split.get("n_test")
            held = " (held-out patients)" if split.get("method") == "patient" else ""
            basis = (f"on {n:,} held-out test images of {data.get('source') or 'its training data'}{held}"
                     if _number(n) else "on held-out test images (how many, the card does not say)")
            recall = {c: v["recall"] for c, v in (m.get("per_class") or {}).items()
                      if isinstance(v, dict) and _number(v.get("recall"))}
            return {"name": card.get("name"), "kind": "test", "accuracy": float(m["accuracy"]),
                    "macro_f1": float(m["macro_f1"]) if _number(m.get("macro_f1")) else None,
                    "recall": recall, "n": int(n) if _number(n) else None, "basis": basis}
    if _number(metrics.get("val_accuracy")):
        val = metrics.get("validation") if isinstance(metrics.get("validation"), dict) else {}
        cmp = metrics.get("comparison") if isinstance(metrics.get("comparison"), dict) else {}
        support = val.get("support") if isinstance(val.get("support"), dict) else {}
        n = cmp.get("n") or (sum(v for v in support.values() if _number(v)) if support else None)
        return {"name": card.get("name"), "kind": "validation", "accuracy": float(metrics["val_accuracy"]),
                "macro_f1": float(metrics["val_macro_f1"]) if _number(metrics.get("val_macro_f1")) else None,
                # a class without validation images has no recall (null; 0.0 in cards written before)
                "recall": {c: float(r) for c, r in (val.get("recall") or {}).items()
                           if _number(r) and support.get(c, 1)},
                "n": int(n) if _number(n) else None,
                "basis": f"on {n:,} reviewed validation images" if _number(n) else "on reviewed validation images"}
    return None


def parent_record(parent_card: dict) -> dict | None:
    """What a retrained card keeps of its parent (``metrics.parent``): the parent's own figures
    and, nested under "parent", those it kept of its own parent (at most MAX_ANCESTORS deep)."""
    own = own_figures(parent_card)
    inherited = (parent_card.get("metrics") or {}).get("parent") if isinstance(parent_card.get("metrics"), dict) else None
    chain = [own] if own else []
    chain += [f for f in figure_chain({"metrics": {"parent": inherited}})] if isinstance(inherited, dict) else []
    chain = chain[:MAX_ANCESTORS]
    if not chain:
        return None
    record = None
    for f in reversed(chain):
        record = {**f, **({"parent": record} if record else {})}
    return record


def figure_chain(card: dict) -> list[dict]:
    """The card's own figures, then its parent's, its grandparent's... as the card keeps them."""
    out = []
    own = own_figures(card)
    if own:
        out.append(own)
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    p = metrics.get("parent")
    while isinstance(p, dict) and len(out) < MAX_ANCESTORS + 1:
        if _number(p.get("accuracy")):
            out.append({k: v for k, v in p.items() if k != "parent"})
        p = p.get("parent")
    return out


def figure_text(f: dict) -> str:
    """e.g. 'accuracy 0.962, macro F1 0.951 on 549 held-out test images of all-taleqani'."""
    parts = [f"accuracy {f['accuracy']:.3f}"]
    if _number(f.get("macro_f1")):
        parts.append(f"macro F1 {f['macro_f1']:.3f}")
    return ", ".join(parts) + " " + str(f.get("basis") or "basis not stated on the card")


def figures_text(card: dict) -> str:
    """Every figure the card keeps, each with its basis: this version's, then its parent's
    ('parent NAME: ...'). '' when it has none."""
    chain = figure_chain(card)
    if not chain:
        return ""
    own = own_figures(card)
    lines = [figure_text(chain[0])] if own is not None else []
    for k, f in enumerate(chain[len(lines):]):
        lines.append(f"{'parent' if k == 0 else 'earlier version'} {f.get('name') or ''}: {figure_text(f)}")
    return "; ".join(lines)
