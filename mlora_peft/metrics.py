"""Per-domain CTR metrics: AUC, log loss, and WAUC (test-size-weighted mean of per-domain AUC)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (ties count one half); None when only one class is present.

    Example:
        >>> import numpy as np
        >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of `probabilities`, clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def domain_report(
    labels: np.ndarray, probabilities: np.ndarray, domain_ids: np.ndarray, domain_names: Sequence[str]
) -> dict:
    """Per-domain AUC, log loss, rows and positives, plus WAUC, mean AUC and overall log loss.

    A domain whose rows hold a single class has `auc` None, is listed under `undefined_auc`,
    and is left out of WAUC and mean AUC.

    Example:
        >>> import numpy as np
        >>> r = domain_report(np.array([0, 1, 0, 1, 1]), np.array([.2, .8, .3, .6, .9]), np.array([0, 0, 1, 1, 2]), ["a", "b", "c"])
        >>> r["wauc"], r["per_domain"]["c"]["auc"], r["undefined_auc"]
        (1.0, None, ['c'])
    """
    labels, probabilities, domain_ids = map(np.asarray, (labels, probabilities, domain_ids))
    per_domain, undefined = {}, []
    for index, name in enumerate(domain_names):
        mask = domain_ids == index
        if not mask.any():
            continue
        auc = roc_auc(labels[mask], probabilities[mask])
        per_domain[name] = {
            "auc": auc,
            "logloss": log_loss(labels[mask], probabilities[mask]),
            "rows": int(mask.sum()),
            "positives": int(labels[mask].sum()),
        }
        if auc is None:
            undefined.append(name)
    defined = [v for v in per_domain.values() if v["auc"] is not None]
    rows = sum(v["rows"] for v in defined)
    return {
        "wauc": sum(v["auc"] * v["rows"] for v in defined) / rows if rows else None,
        "mean_auc": float(np.mean([v["auc"] for v in defined])) if defined else None,
        "logloss": log_loss(labels, probabilities),
        "per_domain": per_domain,
        "undefined_auc": undefined,
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]  # first index of each tie group
    ends = np.r_[starts[1:], values.size]
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks
