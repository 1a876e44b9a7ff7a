"""Average precision for binary labels: the area under the precision-recall curve, as a step sum.

A local `evaluate` module, loaded by path (`ptum_hf.metrics.load_metric("average_precision")`) so it works offline.
"""

import datasets
import evaluate
from sklearn.metrics import average_precision_score

_DESCRIPTION = """
Average precision (AP) sums, over the thresholds given by the scores, the precision reached times the gain in
recall: AP = sum_n (R_n - R_{n-1}) * P_n. It summarises the precision-recall curve and, unlike ROC AUC, depends on
the positive rate: a random scorer gets AP close to the share of positives. Useful for rare positives such as clicks.
"""

_KWARGS_DESCRIPTION = """
Args:
    references (`list` of `int`): true labels, 0 or 1.
    prediction_scores (`list` of `float`): a score per example, higher meaning "more likely 1".
    pos_label (`int`, *optional*, defaults to 1): the positive class.
    sample_weight (`list` of `float`, *optional*): a weight per example.

Returns:
    average_precision (`float`): in [0, 1].

Example:
    >>> average_precision = ptum_hf.metrics.load_metric("average_precision")
    >>> average_precision.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])
    {'average_precision': 0.8333333333333333}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AveragePrecision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html"
            ],
        )

    def _compute(self, references, prediction_scores, pos_label=1, sample_weight=None):
        score = average_precision_score(references, prediction_scores, pos_label=pos_label, sample_weight=sample_weight)
        return {"average_precision": float(score)}
