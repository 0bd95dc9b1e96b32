"""The white-cell differential model: ImageNet EfficientNet-Lite0 on cut-out cells.

The backbone's forward pass is the CPU's cost, so it runs once per cell: ``embed`` keeps the
penultimate embedding (1280-d, what a linear head and the foreign-image guard read) and the
activations after stage 5 (112 x 8 x 8 at 128 px), from which the last two stages can be
fine-tuned without running the first ones again (``finetune_top``). Heads:

- ``fit_linear_head``: multinomial logistic regression on the frozen embeddings (class-balanced),
  written into the model's own ``_fc`` layer, so the shipped model is a plain effnet_lite0;
- ``finetune_top``: stages 6-7, the 1x1 head convolution and ``_fc`` trained on the cached
  stage-5 activations (no image augmentation: the activations are fixed).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.imaging.preprocessing import Preprocessing
from core.models.architectures import build

SPLIT_BLOCK = 11  # blocks 0-10 (stages 1-5) stay frozen; 11-15 (stages 6-7) can be fine-tuned


def backbone(n_classes: int = 9) -> torch.nn.Module:
    """effnet_lite0 with its ImageNet weights and a new ``n_classes`` head, in eval mode."""
    return build("effnet_lite0", n_classes, pretrained=True).eval()


def _stem_to(model, x: torch.Tensor, stop: int) -> torch.Tensor:
    x = F.relu6(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:stop]:
        x = block(x)
    return x


def _top(model, x: torch.Tensor) -> torch.Tensor:
    for block in model._blocks[SPLIT_BLOCK:]:
        x = block(x)
    x = F.relu6(model._bn1(model._conv_head(x)))
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


@torch.no_grad()
def embed(model, images: np.ndarray, prep: Preprocessing, batch_size: int = 64,
          keep_mid: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, S, S, 3) (already the model's input size) -> (N, 1280) float32 embeddings, and
    the float16 stage-5 activations where ``keep_mid``."""
    model.eval()
    embs, mids = [], []
    for i in range(0, len(images), batch_size):
        x = prep.normalise(torch.as_tensor(np.ascontiguousarray(images[i:i + batch_size])))
        mid = _stem_to(model, x, SPLIT_BLOCK)
        embs.append(_top(model, mid).numpy().astype(np.float32))
        if keep_mid:
            mids.append(mid.numpy().astype(np.float16))
    e = np.concatenate(embs) if embs else np.zeros((0, 1280), np.float32)
    return e, (np.concatenate(mids) if keep_mid and mids else None)


class LinearHead:
    """Standardised multinomial logistic regression; ``weights()`` folds the standardisation in,
    giving the (W, b) of a linear layer on the raw embedding."""

    def __init__(self, c: float = 0.5, max_iter: int = 300):
        self.c, self.max_iter = c, max_iter

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "LinearHead":
        """Class-balanced cross-entropy + L2 (sklearn's C convention: 1 / (C * n) per sample),
        full-batch L-BFGS in torch (seconds, where sklearn took half a minute on 2 cores)."""
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        self.n_classes = n_classes
        self.present = np.unique(y)
        z = torch.as_tensor((x - self.mu) / self.sd, dtype=torch.float32)
        t = torch.as_tensor(y)
        counts = np.bincount(y, minlength=n_classes).astype(np.float32)
        cw = torch.as_tensor(np.where(counts > 0, len(y) / (len(self.present) * np.maximum(counts, 1)), 0.0),
                             dtype=torch.float32)
        W = torch.zeros(n_classes, z.shape[1], requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        mask = torch.full((n_classes,), -1e4)
        mask[torch.as_tensor(self.present)] = 0.0
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-9)
        l2 = 1.0 / (2 * self.c * len(y))

        def closure():
            opt.zero_grad()
            out = z @ W.T + b + mask
            loss = (torch.nn.functional.cross_entropy(out, t, reduction="none") * cw[t]).mean() + l2 * (W ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W, self.b = W.detach().numpy().astype(np.float64), b.detach().numpy().astype(np.float64)
        return self

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        W = self.W / self.sd
        b = np.full(self.n_classes, -1e4)  # a class absent from training is never predicted
        b[self.present] = (self.b - W @ self.mu)[self.present]
        return W.astype(np.float32), b.astype(np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        W, b = self.weights()
        return x.astype(np.float64) @ W.T.astype(np.float64) + b


def finetune_top(model, mids: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int = 6, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0, log=print) -> torch.nn.Module:
    """Fine-tune stages 6-7 + head conv + ``_fc`` of ``model`` (in place) on cached stage-5
    activations ``mids`` (float16) with labels ``y``; class-balanced loss. Returns the model."""
    torch.manual_seed(seed)
    params = [p for m in (*model._blocks[SPLIT_BLOCK:], model._conv_head, model._bn1, model._fc) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    weight = torch.tensor(np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0),
                          dtype=torch.float32)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    yt = torch.as_tensor(y)
    for ep in range(epochs):
        model.train()
        model._bn0.eval()
        for b in model._blocks[:SPLIT_BLOCK]:
            b.eval()
        order = rng.permutation(len(y))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = torch.as_tensor(mids[idx].astype(np.float32))
            out = model._fc(model._dropout(_top(model, x)))
            loss = torch.nn.functional.cross_entropy(out, yt[idx], weight=weight, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"fine-tune epoch {ep + 1}/{epochs}: loss {total / len(y):.4f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@torch.no_grad()
def top_outputs(model, mids: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of the (fine-tuned) top on cached stage-5 activations."""
    model.eval()
    lo, em = [], []
    for i in range(0, len(mids), batch_size):
        e = _top(model, torch.as_tensor(mids[i:i + batch_size].astype(np.float32)))
        em.append(e.numpy())
        lo.append(model._fc(e).numpy())
    return np.concatenate(lo).astype(np.float64), np.concatenate(em).astype(np.float32)


def set_head(model, W: np.ndarray, b: np.ndarray) -> None:
    with torch.no_grad():
        model._fc.weight.copy_(torch.as_tensor(W))
        model._fc.bias.copy_(torch.as_tensor(b))


__all__ = ["LinearHead", "SPLIT_BLOCK", "backbone", "embed", "finetune_top", "set_head", "top_outputs"]
