"""Offline `evaluate` metrics and Trainer `compute_metrics` builders for PTUM's downstream tasks.

The canonical `evaluate.load("accuracy")` fetches its script from the Hugging Face Hub, which fails offline. The
metrics here are local `evaluate` modules (one folder per metric, scikit-learn inside) loaded by path.
"""

from pathlib import Path

from .compute import (
    demographic_error_rates,
    group_error_rates,
    make_ctr_compute_metrics,
    make_demographics_compute_metrics,
)

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("accuracy", "f1", "roc_auc", "average_precision")


def metric_path(name: str) -> Path:
    """Path of the local metric script `name` (one of `METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRIC_NAMES)}")
    return METRICS_DIR / name / f"{name}.py"


def load_metric(name: str, **kwargs):
    """
    Load one of the local metrics as an `evaluate.EvaluationModule`, without the Hub.

    `kwargs` go to `evaluate.load`. Results are kept in memory by default (no Arrow cache files); pass
    `keep_in_memory=False` (with `num_process`/`process_id`) for evaluation spread over several processes.

    Example:

    ```python
    >>> from ptum_hf.metrics import load_metric
    >>> load_metric("f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
    ```
    """
    import evaluate  # heavy (it imports transformers' pipelines); only needed here

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = [
    "METRIC_NAMES",
    "demographic_error_rates",
    "group_error_rates",
    "load_metric",
    "make_ctr_compute_metrics",
    "make_demographics_compute_metrics",
    "metric_path",
]
