"""ROC AUC for binary labels: the probability that a random positive is scored above a random negative.

A local `evaluate` module, loaded by path (`ptum_hf.metrics.load_metric("roc_auc")`) so it works offline.
"""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """
The area under the receiver operating characteristic curve (true-positive rate against false-positive rate as the
decision threshold moves). 0.5 is chance, 1.0 a perfect ranking. Only the order of the scores matters, so logits,
probabilities or any monotonic score give the same value. It is undefined when the references hold a single class.
"""

_KWARGS_DESCRIPTION = """
Args:
    references (`list` of `int`): true labels, 0 or 1.
    prediction_scores (`list` of `float`): a score per example, higher meaning "more likely 1".
    sample_weight (`list` of `float`, *optional*): a weight per example.

Returns:
    roc_auc (`float`): the area under the ROC curve, in [0, 1].

Example:
    >>> roc_auc = ptum_hf.metrics.load_metric("roc_auc")
    >>> roc_auc.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.35, 0.8])
    {'roc_auc': 0.75}
"""

_CITATION = """
@article{fawcett2006introduction,
  title={An introduction to ROC analysis},
  author={Fawcett, Tom},
  journal={Pattern Recognition Letters},
  volume={27},
  number={8},
  pages={861--874},
  year={2006}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ROCAUC(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html"],
        )

    def _compute(self, references, prediction_scores, sample_weight=None):
        return {"roc_auc": float(roc_auc_score(references, prediction_scores, sample_weight=sample_weight))}
