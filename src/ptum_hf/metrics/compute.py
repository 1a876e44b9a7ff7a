"""`compute_metrics` builders for the Hugging Face `Trainer`, and per-group error rates for model cards."""

import numpy as np

from ..modeling_ptum import IGNORE_INDEX


def make_demographics_compute_metrics(label_heads: dict[str, int]):
    """
    Build a `compute_metrics` for demographic prediction (e.g. age and gender heads).

    The model's `logits` are the heads' logits concatenated along the last axis, in `label_heads` order, so they have
    shape `(N, sum(label_heads.values()))`. Labels have shape `(N, H)` (or `(N,)` for one head) with -100 where a
    user's label is missing; those rows are ignored for that head only.

    The returned function gives, for each head, `{head}_accuracy`, `{head}_macro_f1` and, for two-class heads,
    `{head}_auc` (NaN when the evaluated rows hold a single class). It also gives `accuracy` and `macro_f1`, the means
    over heads that have labels, meant for `metric_for_best_model`.

    Example:

    ```python
    >>> compute_metrics = make_demographics_compute_metrics({"age": 4, "gender": 2})
    >>> trainer = Trainer(..., compute_metrics=compute_metrics)
    ```
    """
    heads = dict(label_heads)
    if not heads:
        raise ValueError("label_heads is empty")
    accuracy, f1, roc_auc = _load("accuracy", "f1", "roc_auc")
    num_logits = sum(heads.values())

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = _unpack(eval_pred)
        logits = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(labels).astype(np.int64)
        if labels.ndim == 1:
            labels = labels[:, None]
        if logits.ndim != 2 or logits.shape[-1] != num_logits:
            raise ValueError(f"expected logits of shape (N, {num_logits}) for heads {heads}, got {logits.shape}")
        if labels.shape != (len(logits), len(heads)):
            raise ValueError(f"expected labels of shape ({len(logits)}, {len(heads)}), got {labels.shape}")

        results = {}
        for (head, num_classes), head_logits, head_labels in zip(heads.items(), _split(logits, heads), labels.T):
            keep = head_labels != IGNORE_INDEX
            if not keep.any():
                continue  # no user has this label in the evaluation set
            head_logits, references = head_logits[keep], head_labels[keep]
            predictions = head_logits.argmax(-1)
            results[f"{head}_accuracy"] = accuracy.compute(predictions=predictions, references=references)["accuracy"]
            results[f"{head}_macro_f1"] = f1.compute(predictions=predictions, references=references)["f1"]
            if num_classes == 2:
                # The logit margin ranks users exactly like the softmax probability of class 1.
                scores = head_logits[:, 1] - head_logits[:, 0]
                results[f"{head}_auc"] = _binary_auc(roc_auc, references, scores)

        for name in ("accuracy", "macro_f1"):
            values = [results[f"{head}_{name}"] for head in heads if f"{head}_{name}" in results]
            results[name] = float(np.mean(values)) if values else float("nan")
        return results

    return compute_metrics


def make_ctr_compute_metrics():
    """
    Build a `compute_metrics` for click-through-rate prediction.

    Logits have shape `(N,)` (or `(N, 1)`), before the sigmoid; labels are 0/1 clicks. Returns `auc` (ROC AUC, NaN
    when only one class is present), `ap` (average precision) and `logloss` (mean binary cross-entropy).
    """
    roc_auc, average_precision = _load("roc_auc", "average_precision")

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = _unpack(eval_pred)
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(logits) != len(labels):
            raise ValueError(f"got {len(logits)} logits for {len(labels)} labels")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("CTR labels must be 0 or 1")
        return {
            "auc": _binary_auc(roc_auc, labels, logits),
            "ap": average_precision.compute(references=labels, prediction_scores=logits)["average_precision"]
            if labels.any()
            else float("nan"),
            "logloss": binary_log_loss(logits, labels),
        }

    return compute_metrics


def binary_log_loss(logits, labels) -> float:
    """Mean binary cross-entropy computed from logits: log(1 + e^z) - y * z, which never takes log(0)."""
    logits = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - np.asarray(labels) * logits))


def group_error_rates(predictions, labels, groups, ignore_index: int = IGNORE_INDEX) -> dict:
    """
    Error rate of a classifier within each group of users, e.g. the age head's errors among women and among men.

    Args:
        predictions: predicted class ids `(N,)`, or logits `(N, C)` (then the argmax is taken).
        labels: true class ids `(N,)`; rows equal to `ignore_index` are left out.
        groups: the group of each row `(N,)` (ids or names); rows equal to `ignore_index` are left out.

    Returns:
        `{group: {"error_rate": float, "count": int}}`, groups sorted, with plain Python keys.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(-1)
    labels, groups = np.asarray(labels).reshape(-1), np.asarray(groups).reshape(-1)
    if not len(predictions) == len(labels) == len(groups):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(labels)} labels, {len(groups)} groups")

    keep = labels != ignore_index
    if np.issubdtype(groups.dtype, np.number):
        keep &= groups != ignore_index
    rates = {}
    for group in np.unique(groups[keep]):
        in_group = keep & (groups == group)
        errors = predictions[in_group] != labels[in_group]
        rates[group.item()] = {"error_rate": float(errors.mean()), "count": int(in_group.sum())}
    return rates


def demographic_error_rates(logits, labels, label_heads: dict[str, int], group_names: dict | None = None) -> dict:
    """
    Each head's error rate per class of every other head, measured on users that have both labels.

    With heads age and gender this gives the age head's error per gender and the gender head's error per age bucket,
    the table a model card reports. `logits` and `labels` are laid out as in `make_demographics_compute_metrics`.
    `group_names` optionally maps a head to its class names (`{"gender": ["female", "male"]}`) to name the groups.

    Returns:
        `{head: {grouping_head: {group: {"error_rate": float, "count": int}}}}`.
    """
    heads = dict(label_heads)
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim == 1:
        labels = labels[:, None]
    predictions = {head: head_logits.argmax(-1) for head, head_logits in zip(heads, _split(logits, heads))}
    columns = dict(zip(heads, labels.T))
    group_names = group_names or {}

    results = {}
    for head in heads:
        for grouping_head in heads:
            if grouping_head == head:
                continue
            rates = group_error_rates(predictions[head], columns[head], columns[grouping_head])
            names = group_names.get(grouping_head)
            if names is not None:
                rates = {names[group]: value for group, value in rates.items()}
            results.setdefault(head, {})[grouping_head] = rates
    return results


def _load(*names):
    from . import load_metric  # imported here: the package imports this module first

    return [load_metric(name) for name in names]


def _unpack(eval_pred):
    """(logits, labels) from an `EvalPrediction` or a tuple; the first element when predictions are a tuple."""
    if hasattr(eval_pred, "predictions"):
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        predictions, labels = eval_pred[0], eval_pred[1]
    # The Trainer passes every non-loss model output; logits come first.
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if isinstance(labels, tuple):
        labels = labels[0]
    return predictions, labels


def _split(logits, heads: dict[str, int]):
    """The per-head blocks of the concatenated logits, in `heads` order."""
    offsets = np.cumsum(list(heads.values()))[:-1]
    return np.split(logits, offsets, axis=-1)


def _binary_auc(roc_auc, references, scores) -> float:
    # AUC is undefined with a single class (e.g. a tiny eval set); NaN keeps the metric keys stable.
    if np.unique(references).size < 2:
        return float("nan")
    return roc_auc.compute(references=references, prediction_scores=scores)["roc_auc"]
