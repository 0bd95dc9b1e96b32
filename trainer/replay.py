"""Fine-tuning that cannot forget a class the reviewer gave no examples of.

A lab often corrects one kind of mistake only (normal cells called ALL): training the
network on those images alone teaches it that everything is that class. The learning
curve showed it: after 120 reviewed normal cells of another lab, the shipped ALL-vs-normal
model called every held-out ALL cell Normal (docs/retrain.md).

Here the backbone stays as it was and only the final linear layer is refitted, on the
reviewed images' embeddings (several augmented views) plus embeddings *replayed* from the
parent's foreign-image guard: its class-conditional Gaussians of the training side
(class means and shared covariance, stored whitened: embedding = (whitened mean + z) W^-1,
z ~ N(0, I)). No training image is needed, and the classes the reviewer did not touch
keep their place: the replayed embeddings learn the parent head's own probabilities (distil).
An image model's guard is refitted on the same mixture, so the parent's classes are not
suddenly "outside experience" either; a cell model keeps its parent's guard and adds the
reviewed cells' centres (trainer.guard.extend_guard). Generative feature replay: e.g. Liu et al.,
"Generative Feature Replay for Class-Incremental Learning", CVPR-W 2020.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from core.jobs import Progress
from core.models.architectures import classifier_head
from core.models.guard import ForeignImageGuard
from trainer import augment as aug
from trainer.guard import logits_and_embeddings

REPLAY_PER_CLASS = 256
AUGMENTED_VIEWS = 4
HEAD_STEPS = 300
HEAD_LR = 1e-2


def replay_possible(guard: ForeignImageGuard | None) -> bool:
    """Sampling needs the full whitening (no PCA projection): true for the shipped models."""
    return guard is not None and guard.whitening.shape[0] == guard.whitening.shape[1]


def replay_embeddings(guard: ForeignImageGuard, classes_fitted: list[int], n: int, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` embeddings per centre drawn from the guard's Gaussians, with their class indices
    (``classes_fitted``: the class of each centre, ForeignImageGuard.classes_of_centres; a class
    with several centres, its parent's and a reviewed lab's, gets n from each)."""
    rng = np.random.default_rng(seed)
    w_inv = np.linalg.inv(guard.whitening.astype(np.float64))
    embs, labels = [], []
    for row, cls in enumerate(classes_fitted):
        z = guard.class_means[row].astype(np.float64) + rng.standard_normal((n, guard.whitening.shape[1]))
        embs.append(z @ w_inv)
        labels.append(np.full(n, cls, dtype=np.int64))
    return np.concatenate(embs), np.concatenate(labels)


def reviewed_embeddings(model: nn.Module, images: np.ndarray, labels: np.ndarray, prep, augment: dict,
                        device, seed: int = 0, views: int = AUGMENTED_VIEWS) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the reviewed images: as they are, and ``views - 1`` augmented views."""

    augmenter = aug.Augmenter(aug.AugmentConfig(**augment), fill=prep.mean)
    gen = torch.Generator().manual_seed(seed)
    out = [logits_and_embeddings(model, images, prep, device)[1]]
    for _ in range(views - 1):
        seen = augmenter(torch.from_numpy(images), gen).numpy()
        out.append(logits_and_embeddings(model, seen, prep, device)[1])
    return np.concatenate(out), np.tile(labels, views)


REPORT_EVERY = 10  # steps between two points of the curves (and one progress message)


def fit_head_with_replay(model: nn.Module, real: np.ndarray, real_y: np.ndarray, replay: np.ndarray,
                         replay_y: np.ndarray, n_classes: int, steps: int = HEAD_STEPS, lr: float = HEAD_LR,
                         seed: int = 0, cancel=None, val: tuple[np.ndarray, np.ndarray] | None = None,
                         stage_name: str = "train", progress=None, anchor: float = 0.0, real_share: float = 0.5,
                         distill: bool = False):
    """Refit the final linear layer (started from the parent's) on reviewed and replayed
    embeddings: for each class, its reviewed images weigh ``real_share`` and its replayed ones
    the rest (all of it when it has only one kind), and every class weighs the same.
    ``anchor``: an L2 pull of the weights and bias towards the parent's (L2-SP, Li et al., ICML
    2018), sum of squared differences times ``anchor``, so that what the reviewed cells do not
    ask for stays as the parent had it. ``distill``: the replayed embeddings' targets are the
    parent head's own probabilities on them, not the class they were drawn from (learning
    without forgetting, Li & Hoiem 2017, on replayed features): the Gaussians are only roughly
    where the parent's cells were, and fitting their labels moved the parent's decisions.

    A job generator, as ``engine.fit``: yields ``Progress`` (``stage_name`` per step with
    ``step``/``steps``, loss and time left; ``validate`` every REPORT_EVERY steps with the
    history so far, on the validation embeddings ``val`` = (embeddings, labels) when given)
    and returns {status, history, best, train_seconds, stopped_early}; ``progress`` is also
    called with every Progress. A history entry's ``epoch`` counts steps (``unit`` says so)."""

    def emit(p: Progress) -> Progress:
        if progress is not None:
            progress(p)
        return p

    torch.manual_seed(seed)
    head = classifier_head(model)
    x = torch.as_tensor(np.concatenate([real, replay]), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate([real_y, replay_y]))
    kind = np.concatenate([np.zeros(len(real_y), bool), np.ones(len(replay_y), bool)])
    w = np.zeros(len(y))
    present = np.unique(y.numpy())
    for c in present:
        real_c, replay_c = (y.numpy() == c) & ~kind, (y.numpy() == c) & kind
        if real_c.any() and replay_c.any():
            w[real_c] = real_share / (real_c.sum() * len(present))
            w[replay_c] = (1.0 - real_share) / (replay_c.sum() * len(present))
        else:
            m = real_c | replay_c
            w[m] = 1.0 / (m.sum() * len(present))
    weight = torch.as_tensor(w, dtype=torch.float32)
    x_val = y_val = None
    if val is not None and len(val[1]):
        x_val = torch.as_tensor(val[0], dtype=torch.float32)
        y_val = torch.as_tensor(np.asarray(val[1]))
    start = [p.detach().clone() for p in head.parameters()]
    n_real = len(real_y)
    soft = None
    if distill and len(replay_y):
        with torch.no_grad():
            soft = torch.softmax(head(x[n_real:]), 1)
    # with the pull towards the parent, AdamW's decay towards zero would fight it
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0 if anchor else 1e-4)
    t0 = time.perf_counter()
    history: list[dict] = []
    head.train()
    for step in range(steps):
        if cancel is not None and cancel.is_set():
            return {"status": "cancelled", "history": history, "best": {"epoch": step},
                    "train_seconds": time.perf_counter() - t0, "stopped_early": False}
        out = head(x)
        if soft is None:
            loss = (nn.functional.cross_entropy(out, y, reduction="none") * weight).sum()
        else:
            loss = (nn.functional.cross_entropy(out[:n_real], y[:n_real], reduction="none") * weight[:n_real]).sum() \
                + (nn.functional.cross_entropy(out[n_real:], soft, reduction="none") * weight[n_real:]).sum()
        if anchor:
            loss = loss + anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(head.parameters(), start))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        elapsed = time.perf_counter() - t0
        yield emit(Progress(stage_name, done, steps, f"step {done}/{steps} loss {float(loss.detach()):.3f}",
                            {"step": done, "steps": steps, "loss": float(loss.detach()), "unit": "step",
                             "eta_s": elapsed / done * (steps - done), "elapsed_s": elapsed}))
        if done % REPORT_EVERY == 0 or done == steps:
            with torch.no_grad():
                pred = head(x).argmax(1)
                rec = {"epoch": done, "unit": "step", "train_loss": float(loss.detach()),
                       "train_accuracy": float((pred[: len(real_y)] == y[: len(real_y)]).float().mean())
                       if len(real_y) else None,
                       "replay_accuracy": float((pred[len(real_y):] == y[len(real_y):]).float().mean()),
                       "val_loss": None, "val_accuracy": None, "val_macro_f1": None, "lr": lr,
                       "train_images_per_s": None}
                if x_val is not None:
                    head.eval()
                    out = head(x_val)
                    head.train()
                    rec["val_loss"] = float(nn.functional.cross_entropy(out, y_val))
                    rec["val_accuracy"] = float((out.argmax(1) == y_val).float().mean())
            history.append(rec)
            yield emit(Progress("validate", done, steps, f"step {done}/{steps}",
                                {"history": list(history), "epoch": done, "epochs": steps, "unit": "step"}))
    model.eval()
    return {"status": "completed", "history": history, "best": {"epoch": steps}, "train_seconds": time.perf_counter() - t0,
            "stopped_early": False}
