"""Classification metrics (scikit-learn), calibration (ECE, temperature scaling), the
uncertain threshold and OOD separation, and plain-text/Markdown tables."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1).numpy()


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (equal-width confidence bins, top-label)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, bins[1:-1], right=True), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro/per-class precision/recall/F1, confusion matrix, ECE, NLL.

    The macro figures average over the classes PRESENT in ``y`` (``classes_present``): a
    class with no image has no recall, and counting it as 0 halved a one-class folder's
    figure (95.4% called Normal showed as 0.477). ``classes_absent`` lists the others."""
    y = np.asarray(y)
    pred = probs.argmax(1)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = s > 0
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()) if len(y) else float("nan")

    def over_present(v: np.ndarray) -> float:
        return float(v[present].mean()) if present.any() else float("nan")

    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_precision": over_present(p),
        "macro_recall": over_present(r),
        # = macro_recall (sklearn's balanced_accuracy_score); kept for the cards that record it
        "balanced_accuracy": over_present(r),
        "macro_f1": over_present(f),
        "classes_present": [c for c, k in zip(classes, present) if k],
        "classes_absent": [c for c, k in zip(classes, present) if not k],
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "ece": ece(probs, y),
        "nll": nll,
    }


def per_group_metrics(y: np.ndarray, probs: np.ndarray, groups, classes: list[str]) -> dict[str, dict]:
    """Accuracy per group (e.g. per subject: a patient or a donor), for reporting where a
    model fails: {group: {"n", "class" (the group's true class, or "mixed"), "accuracy",
    "predicted" (count per predicted class), "mean_confidence", "ece"}}. Groups are sorted
    with numbers in numeric order; images whose group is None are left out."""
    import re

    y = np.asarray(y)
    pred = probs.argmax(1)
    groups = np.asarray([None if g is None else str(g) for g in groups], dtype=object)
    names = sorted({g for g in groups if g is not None},
                   key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    out: dict[str, dict] = {}
    for g in names:
        m = groups == g
        present = np.unique(y[m])
        out[g] = {"n": int(m.sum()),
                  "class": classes[int(present[0])] if len(present) == 1 else "mixed",
                  "accuracy": float((pred[m] == y[m]).mean()),
                  "predicted": {c: int((pred[m] == i).sum()) for i, c in enumerate(classes)},
                  "mean_confidence": float(probs[m].max(1).mean()),
                  "ece": ece(probs[m], y[m])}
    return out


def per_group_markdown(per_group: dict[str, dict], classes: list[str], label: str = "subject") -> str:
    """The per-group metrics as a Markdown table (one row per group)."""
    rows = [{"group": g, "class": v["class"], "n": v["n"], "accuracy": v["accuracy"],
             **{f"pred_{c}": v["predicted"].get(c, 0) for c in classes}, "conf": v["mean_confidence"]}
            for g, v in per_group.items()]
    cols = [("group", label), ("class", "true class"), ("n", "n"), ("accuracy", "accuracy"),
            *[(f"pred_{c}", f"called {c}") for c in classes], ("conf", "mean confidence")]
    return markdown_table(rows, cols)


def fit_temperature(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): one scalar T > 0 minimising validation NLL."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def uncertain_threshold(probs_val: np.ndarray, coverage: float = 0.95) -> float:
    """Max-probability threshold that keeps ``coverage`` of in-distribution validation
    images confident; below it a prediction is reported as "uncertain"."""
    return float(np.quantile(probs_val.max(1), 1.0 - coverage))


def ood_auroc(conf_in: np.ndarray, conf_out: np.ndarray) -> float:
    """AUROC of max-softmax confidence separating in-distribution (positive) from OOD."""
    y = np.r_[np.ones(len(conf_in)), np.zeros(len(conf_out))]
    return float(roc_auc_score(y, np.r_[conf_in, conf_out]))


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """rows of dicts -> Markdown; columns = [(key, header)]. Floats in [0, 1] as 0.000."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


EVAL_COLUMNS = [("variant", "evaluation"), ("accuracy", "accuracy"), ("macro_precision", "macro P"),
                ("macro_recall", "macro R"), ("macro_f1", "macro F1"), ("ece", "ECE"), ("n", "n")]
