import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

from ptum_hf.metrics import (
    METRIC_NAMES,
    demographic_error_rates,
    group_error_rates,
    load_metric,
    make_ctr_compute_metrics,
    make_demographics_compute_metrics,
)

HEADS = {"age": 3, "gender": 2}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_local_metrics_load_by_path_and_match_sklearn(name, rng):
    metric = load_metric(name)
    references = rng.integers(0, 2, 64)
    if name in ("accuracy", "f1"):
        predictions = rng.integers(0, 2, 64)
        result = metric.compute(predictions=predictions, references=references)
        expected = {
            "accuracy": accuracy_score(references, predictions),
            "f1": f1_score(references, predictions, average="macro"),
        }[name]
    else:
        scores = rng.normal(size=64)
        result = metric.compute(references=references, prediction_scores=scores)
        expected = {"roc_auc": roc_auc_score, "average_precision": average_precision_score}[name](references, scores)
    assert result == {name: pytest.approx(expected)}


def test_load_metric_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


def _demographics_batch():
    # 4 users; logits = [age (3) | gender (2)]
    logits = np.array(
        [
            [3.0, 0.0, 0.0, 2.0, 0.0],  # age 0, gender 0
            [0.0, 3.0, 0.0, 0.0, 2.0],  # age 1, gender 1
            [0.0, 0.0, 3.0, 0.0, 1.0],  # age 2, gender 1
            [3.0, 0.0, 0.0, 1.0, 0.0],  # age 0, gender 0
        ]
    )
    labels = np.array([[0, 0], [1, 1], [0, -100], [-100, 1]])
    return logits, labels


def test_demographics_metrics_per_head_and_mean():
    compute_metrics = make_demographics_compute_metrics(HEADS)
    logits, labels = _demographics_batch()
    # The Trainer hands over a tuple of every model output; logits come first.
    metrics = compute_metrics(((logits, np.zeros((4, 7))), labels))

    # age: users 0-2 labelled, predictions [0, 1, 2] vs [0, 1, 0]
    assert metrics["age_accuracy"] == pytest.approx(2 / 3)
    assert metrics["age_macro_f1"] == pytest.approx(f1_score([0, 1, 0], [0, 1, 2], average="macro"))
    # gender: users 0, 1, 3 labelled, predictions [0, 1, 0] vs [0, 1, 1]
    assert metrics["gender_accuracy"] == pytest.approx(2 / 3)
    assert metrics["gender_auc"] == pytest.approx(roc_auc_score([0, 1, 1], [-2.0, 2.0, -1.0]))
    assert "age_auc" not in metrics  # AUC only for two-class heads
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((metrics["age_macro_f1"] + metrics["gender_macro_f1"]) / 2)


def test_demographics_metrics_accept_eval_prediction_and_one_head():
    from transformers import EvalPrediction

    compute_metrics = make_demographics_compute_metrics({"gender": 2})
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, -100])))
    assert metrics["gender_accuracy"] == metrics["accuracy"] == 1.0
    assert metrics["gender_auc"] == 1.0


def test_demographics_auc_is_nan_with_one_class_and_heads_without_labels_are_skipped():
    compute_metrics = make_demographics_compute_metrics(HEADS)
    logits, _ = _demographics_batch()
    labels = np.array([[0, 1], [1, 1], [-100, 1], [2, -100]])
    metrics = compute_metrics((logits, labels))
    assert math.isnan(metrics["gender_auc"])

    metrics = compute_metrics((logits, np.array([[0, -100]] * 4)))
    assert "gender_accuracy" not in metrics
    assert metrics["accuracy"] == metrics["age_accuracy"]


def test_demographics_metrics_check_shapes():
    compute_metrics = make_demographics_compute_metrics(HEADS)
    with pytest.raises(ValueError, match="logits"):
        compute_metrics((np.zeros((4, 4)), np.zeros((4, 2))))
    with pytest.raises(ValueError, match="labels"):
        compute_metrics((np.zeros((4, 5)), np.zeros((4, 3))))


def test_ctr_metrics_match_sklearn(rng):
    labels = rng.integers(0, 2, 200)
    logits = rng.normal(size=200) + labels
    metrics = make_ctr_compute_metrics()((logits[:, None], labels))
    probabilities = 1 / (1 + np.exp(-logits))
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, logits))
    assert metrics["ap"] == pytest.approx(average_precision_score(labels, logits))
    assert metrics["logloss"] == pytest.approx(log_loss(labels, probabilities))


def test_ctr_logloss_is_finite_for_extreme_logits():
    metrics = make_ctr_compute_metrics()((np.array([1000.0, -1000.0]), np.array([0, 1])))
    assert metrics["logloss"] == pytest.approx(1000.0)
    assert metrics["auc"] == 0.0


def test_group_error_rates():
    predictions = np.array([0, 1, 1, 0, 1, 0])
    labels = np.array([0, 1, 0, 0, -100, 1])
    groups = np.array(["f", "f", "m", "m", "m", "m"])
    assert group_error_rates(predictions, labels, groups) == {
        "f": {"error_rate": 0.0, "count": 2},
        "m": {"error_rate": pytest.approx(2 / 3), "count": 3},
    }
    # logits are reduced by argmax; missing groups (-100) are left out
    logits = np.eye(2)[predictions]
    rates = group_error_rates(logits, labels, np.array([0, 0, 1, 1, 1, -100]))
    assert rates == {0: {"error_rate": 0.0, "count": 2}, 1: {"error_rate": 0.5, "count": 2}}
    assert all(type(group) is int for group in rates)


def test_demographic_error_rates_cross_heads():
    logits, labels = _demographics_batch()
    rates = demographic_error_rates(logits, labels, HEADS, group_names={"gender": ["female", "male"]})
    # age head among users with a gender label: user 0 (female, right), user 1 (male, right)
    assert rates["age"]["gender"] == {
        "female": {"error_rate": 0.0, "count": 1},
        "male": {"error_rate": 0.0, "count": 1},
    }
    # gender head by age bucket: user 0 (age 0, right), user 1 (age 1, right); user 2 has no gender label
    assert rates["gender"]["age"] == {0: {"error_rate": 0.0, "count": 1}, 1: {"error_rate": 0.0, "count": 1}}
