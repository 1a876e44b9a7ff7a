"""Accuracy: the share of examples whose predicted label equals the reference label.

A local `evaluate` module, loaded by path (`ptum_hf.metrics.load_metric("accuracy")`) so it works offline.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = """
Accuracy is the number of correct predictions divided by the number of examples. It ranges from 0 to 1; higher is
better. It says little on imbalanced labels (predicting the majority class scores well); report macro-F1 next to it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    sample_weight (`list` of `float`, *optional*): a weight per example.

Returns:
    accuracy (`float`): the (weighted) share of correct predictions.

Example:
    >>> accuracy = ptum_hf.metrics.load_metric("accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, sample_weight=None):
        return {"accuracy": float(accuracy_score(references, predictions, sample_weight=sample_weight))}
