"""The cell learning curve's adaptation (trainer/cell_curve.py): retrain's head refit with
feature replay, on embeddings. Synthetic Gaussian "labs" in 16 dimensions."""
from __future__ import annotations

import numpy as np

from trainer.cell_curve import Parent, adapt, macro_recall


def _lab(rng, shift, n=60, dim=16, classes=(1, 2, 3)):
    means = {c: np.eye(dim)[c] * 6.0 for c in classes}
    x = np.concatenate([means[c] + shift + rng.standard_normal((n, dim)) for c in classes]).astype(np.float32)
    return x, np.repeat(np.array(classes), n)


def test_macro_recall_leaves_out_classes_with_too_few_cells():
    y = np.array([1] * 10 + [2] * 10 + [3])
    pred = np.array([1] * 10 + [1] * 10 + [1])  # class 3 (one cell) wrong, class 2 all wrong
    assert macro_recall(y, pred, min_class=5) == 0.5
    assert macro_recall(y, pred, min_class=1) == 1 / 3


def test_a_few_reviewed_cells_move_the_new_lab_and_its_guard_admits_it():
    rng = np.random.default_rng(0)
    x, y = _lab(rng, 0.0)
    held, _ = _lab(rng, 0.0, n=20)
    parent = Parent(x, y, held, c=0.5, temperature=1.0)
    shift = np.zeros(16, np.float32)
    shift[8:] = 4.0
    shift[1], shift[2] = -6.0, 6.0  # the new lab's class 1 looks like the parent's class 2
    new_x, new_y = _lab(rng, shift)
    before = macro_recall(new_y, parent.probs(new_x).argmax(1))
    other_x, _ = _lab(rng, np.full(16, -8.0, np.float32), n=20)  # a lab held out of training and review
    assert parent.guard.flags(new_x)[1].mean() > 0.9 and parent.guard.flags(other_x)[1].all()
    pick = rng.permutation(len(new_y))[:30]
    tr, va = pick[:24], pick[24:]
    views = np.concatenate([new_x[tr]] * 4)
    W, b, guard = adapt(parent, views, np.tile(new_y[tr], 4), new_x[tr], new_y[tr], new_x[va], new_x, seed=0)
    left = np.setdiff1d(np.arange(len(new_y)), pick)
    after = macro_recall(new_y[left], (new_x[left] @ W.T + b).argmax(1))
    assert before < 0.7 and after > 0.9
    assert guard.flags(new_x[left])[1].mean() < 0.35  # admits most of the new lab (threshold from 6 cells)
    assert guard.flags(other_x)[1].all()  # still flags the lab nobody reviewed
    own = (x @ W.T + b).argmax(1)
    assert (own == y).mean() > 0.95  # and keeps the parent's own lab
