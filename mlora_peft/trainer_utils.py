"""`transformers.Trainer` support: per-domain metrics from an `EvalPrediction`.

`CTRModel` takes the features as keywords and returns a `loss`, so `Trainer` trains a routed model
as it is. Two `TrainingArguments` make the rest work:

- `remove_unused_columns=False`: `CTRModel.forward` takes the features as `**features`, so
  `Trainer` would otherwise drop every feature column (it keeps only the columns named in
  forward's signature).
- `label_names=["labels", "domain_id"]` (the adapter's `domain_key` second): `Trainer` then hands
  the domain ids to `compute_metrics` beside the labels, gathered from every process in the same
  order as the logits. The domain column still reaches the model, which routes each row by it.

`transformers.default_data_collator` (the `Trainer` default) renames the `label` column to
`labels` and stacks the rest, so `MultiDomainData` splits need no collator of their own. The
guide "Train with transformers' Trainer" (docs/guides/trainer.md) puts it together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import EvalPrediction

from .metrics import domain_report


def domain_metrics(domain_names: Sequence[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: per-domain AUC and log loss, WAUC, mean AUC.

    The numbers are `mlora_peft.metrics.domain_report`'s, computed from the click probabilities
    `torch.sigmoid(logits)` exactly as `mlora_peft.evaluation.evaluate` computes them. Keys are
    `wauc`, `mean_auc`, `logloss`, `<domain>/auc` and `<domain>/logloss` (`Trainer` prefixes
    `eval_`); a domain whose rows hold one class has no `<domain>/auc` (see `domain_report`).

    Args:
        domain_names: the domain names in id order, e.g. `data.domain_names` or the adapter config's.

    Returns:
        A function of an `EvalPrediction` whose `label_ids` are `(labels, domain_ids)`, as `Trainer`
        gives them with `TrainingArguments(label_names=["labels", "domain_id"])`.

    Raises:
        ValueError: (when called) `label_ids` without the domain ids, or predictions of another length.

    Example:
        >>> import numpy as np
        >>> from transformers import EvalPrediction
        >>> compute_metrics = domain_metrics(["a", "b"])
        >>> logits = np.array([-1.0, 2.0, 0.5, -0.5], dtype=np.float32)
        >>> labels, domain_ids = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0, 0, 1, 1])
        >>> metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=(labels, domain_ids)))
        >>> metrics["a/auc"], metrics["wauc"], sorted(metrics)
        (1.0, 1.0, ['a/auc', 'a/logloss', 'b/auc', 'b/logloss', 'logloss', 'mean_auc', 'wauc'])
    """
    names = list(domain_names)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        labels, domain_ids = _labels_and_domains(prediction.label_ids)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        probabilities = torch.sigmoid(torch.as_tensor(np.asarray(logits)).float()).numpy()  # as evaluation.predict
        if probabilities.shape != labels.shape:
            raise ValueError(f"Got {probabilities.shape} predictions for {labels.shape} labels; the model should "
                             "return (N,) logits, as CTRModel does.")
        return flat_metrics(domain_report(labels, probabilities, domain_ids, names))

    return compute_metrics


def flat_metrics(report: dict) -> dict[str, float]:
    """A `domain_report` as flat `{name: float}` metrics for `Trainer` and trackers (undefined AUCs left out).

    Example:
        >>> r = {"wauc": 0.7, "mean_auc": 0.7, "logloss": 0.5, "per_domain": {"a": {"auc": 0.7, "logloss": 0.5}}}
        >>> flat_metrics(r)
        {'wauc': 0.7, 'mean_auc': 0.7, 'logloss': 0.5, 'a/auc': 0.7, 'a/logloss': 0.5}
    """
    metrics = {key: report[key] for key in ("wauc", "mean_auc", "logloss")}
    for name, row in report["per_domain"].items():
        metrics[f"{name}/auc"], metrics[f"{name}/logloss"] = row["auc"], row["logloss"]
    return {key: float(value) for key, value in metrics.items() if value is not None}


def _labels_and_domains(label_ids: object) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, domain_ids)` as flat arrays, or an error that names the `TrainingArguments` fix."""
    if not isinstance(label_ids, (tuple, list)) or len(label_ids) != 2:
        raise ValueError(
            "Per-domain metrics need the domain ids beside the labels, but the EvalPrediction holds only "
            "labels. Set TrainingArguments(label_names=['labels', 'domain_id']) (your domain_key second)."
        )
    labels, domain_ids = (np.asarray(a).reshape(-1) for a in label_ids)  # (N,) each
    return labels, domain_ids
