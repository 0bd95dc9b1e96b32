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



def test_the_head_refit_keeps_the_parents_decisions_on_its_replayed_memory():
    """Replayed embeddings are Gaussian samples of the parent's classes: only roughly where its
    cells were, so fitting the class each was drawn from moved the parent's boundaries (the
    other sources dropped 0.03-0.11 after any retrain, docs/retrain.md). With distil, their
    targets are the parent head's own probabilities: where the replay and the parent disagree,
    the parent's decision is kept, and the reviewed cells are still learnt."""
    import torch

    from core.jobs import run_job
    from trainer.replay import fit_head_with_replay

    rng = np.random.default_rng(5)
    dim, n_classes = 8, 3
    torch.manual_seed(0)
    parent_head = torch.nn.Linear(dim, n_classes)
    replay = rng.standard_normal((300, dim)).astype(np.float32) * 3
    with torch.no_grad():
        parent_calls = parent_head(torch.as_tensor(replay)).argmax(1).numpy()
    replay_y = (parent_calls + rng.integers(0, 2, len(parent_calls))) % n_classes  # half disagree with the parent
    real = (np.eye(dim)[5] * 12 + rng.standard_normal((20, dim))).astype(np.float32)  # a new lab far away
    real_y = np.full(20, 2)

    def refit(distill: bool):
        model = torch.nn.Sequential(torch.nn.Linear(dim, n_classes))
        model[0].load_state_dict(parent_head.state_dict())
        run_job(fit_head_with_replay(model, real, real_y, replay, replay_y, n_classes, steps=200, distill=distill))
        with torch.no_grad():
            return (model(torch.as_tensor(replay)).argmax(1).numpy() == parent_calls).mean(), \
                (model(torch.as_tensor(real)).argmax(1).numpy() == 2).mean()

    moved, _ = refit(distill=False)
    kept, learnt = refit(distill=True)
    assert moved < 0.8  # fitting the replayed labels moved the parent's decisions
    assert kept > 0.95 and learnt == 1.0
