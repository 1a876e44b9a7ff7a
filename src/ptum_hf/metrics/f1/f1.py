"""F1: the harmonic mean of precision and recall, averaged over classes (macro) by default.

A local `evaluate` module, loaded by path (`ptum_hf.metrics.load_metric("f1")`) so it works offline.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = """
F1 = 2 * precision * recall / (precision + recall), computed per class. With `average="macro"` (the default here,
as in the PTUM paper's demographic tasks) the per-class scores are averaged with equal weight, so rare classes count
as much as frequent ones. Classes that appear in neither predictions nor references are left out of the average.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    average (`str`, *optional*, defaults to `"macro"`): `"macro"`, `"micro"`, `"weighted"`, or `"binary"`
        (then `pos_label` is the positive class).
    pos_label (`int`, *optional*, defaults to 1): the positive class when `average="binary"`.
    sample_weight (`list` of `float`, *optional*): a weight per example.

Returns:
    f1 (`float`): the averaged F1 score, in [0, 1].

Example:
    >>> f1 = ptum_hf.metrics.load_metric("f1")
    >>> f1.compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 1])
    {'f1': 0.7777777777777777}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, average="macro", pos_label=1, sample_weight=None):
        # zero_division=0: a class never predicted gets F1 0 instead of a warning and NaN.
        score = f1_score(
            references, predictions, average=average, pos_label=pos_label, sample_weight=sample_weight, zero_division=0
        )
        return {"f1": float(score)}
