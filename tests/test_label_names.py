"""Class names of label heads: stored in the config (`label_names`, and `id2label` with one head), `num_labels` as
transformers' Auto classes pass it, the ingest summary of labels, and the load report of a new head."""

import logging

import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification

from ptum_hf import PTUMConfig, PTUMForCTR, PTUMForDemographicClassification, PTUMForPretraining
from ptum_hf.data import read_behavior_log

from conftest import tiny_config

PLAN = {"plan": ["free", "pro", "team"]}


def test_label_names_are_saved_and_give_id2label_with_one_head(tmp_path):
    PTUMForDemographicClassification(tiny_config(label_heads={"plan": 3}, label_names=PLAN)).save_pretrained(tmp_path)
    config = PTUMConfig.from_pretrained(tmp_path)
    assert config.label_names == PLAN
    assert config.id2label == {0: "free", 1: "pro", 2: "team"} and config.label2id == {"free": 0, "pro": 1, "team": 2}
    assert tiny_config(label_heads={"tier": 2}).id2label == {0: "LABEL_0", 1: "LABEL_1"}  # no names: transformers'
    assert tiny_config(label_heads={"tier": 2}, label_names={"tier": [1, 2]}).id2label == {0: "1", 1: "2"}
    several = tiny_config(label_names={"gender": ["M", "F"]})  # several heads: names of some of them
    assert several.label_names == {"gender": ["M", "F"]} and several.label_heads == {"age": 4, "gender": 2}


@pytest.mark.parametrize(
    "label_names, message",
    [
        ({"tier": ["a", "b"]}, r"label_names has head 'tier', which is not in label_heads \['plan'\]"),
        ({"plan": ["a", "b"]}, r"label_names\['plan'\] has 2 class names but label_heads\['plan'\] has 3 classes"),
        ({"plan": ["a", "b", "a"]}, r"label_names\['plan'\] names a class twice"),
        ({"plan": ["1", 1, "b"]}, r"label_names\['plan'\] names a class twice"),
        ({"plan": ["a", None, "b"]}, r"label_names\['plan'\] must be a list of class names \(strings or integers\)"),
        ({"plan": "abc"}, r"label_names\['plan'\] must be a list of class names"),
        (["free"], "label_names must be a dict of head name -> class names"),
    ],
)
def test_bad_label_names_are_refused_by_name(label_names, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(label_heads={"plan": 3}, label_names=label_names)


def test_label_names_that_do_not_fit_an_overridden_head_are_refused_when_the_model_is_built(tmp_path):
    PTUMForDemographicClassification(tiny_config(label_heads={"plan": 3}, label_names=PLAN)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"label_names has head 'plan', which is not in label_heads \['tier'\]"):
        PTUMForDemographicClassification.from_pretrained(tmp_path, label_heads={"tier": 2})
    model = PTUMForDemographicClassification.from_pretrained(
        tmp_path, label_heads={"tier": 2}, label_names={"tier": ["a", "b"]}, ignore_mismatched_sizes=True
    )
    assert model.config.id2label == {0: "a", 1: "b"}  # the maps follow overrides given to from_pretrained


def test_num_labels_sets_the_one_head_and_refuses_several(tmp_path):
    single, several = tmp_path / "single", tmp_path / "several"
    PTUMForDemographicClassification(tiny_config(label_heads={"plan": 3}, label_names=PLAN)).save_pretrained(single)
    PTUMForPretraining(tiny_config()).save_pretrained(several)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers' rule for a resized head
        AutoModelForSequenceClassification.from_pretrained(single, num_labels=5)
    model = AutoModelForSequenceClassification.from_pretrained(single, num_labels=5, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 5 and model.config.label_heads == {"plan": 5}
    assert model.config.label_names == {} and model.config.num_labels == 5  # the old names named 3 classes
    same = AutoModelForSequenceClassification.from_pretrained(single, num_labels=3)
    assert same.config.label_names == PLAN and same.classifier.out_features == 3
    with pytest.raises(ValueError, match=r"num_labels=5 sets the class count of a model with one label head.*age"):
        AutoModelForSequenceClassification.from_pretrained(several, num_labels=5)


def test_ingest_summary_counts_labeled_users_per_class_and_the_missing(tmp_path):
    log = tmp_path / "log.csv"
    events = [(u, 1_700_000_000 + i, f"text {i}") for i, u in enumerate(["a", "b", "c", "d", "e", "e"])]
    pd.DataFrame(events, columns=["user_id", "timestamp", "text"]).to_csv(log, index=False)
    labels = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "plan": ["pro", "free", "pro", None], "tier": [1, 2, 2, 2]})
    data = read_behavior_log(log, labels=labels)
    assert data.report.label_counts == {"plan": {"free": 1, "pro": 2}, "tier": {1: 1, 2: 3}}
    summary = data.report.summary()
    assert "label 'plan': 3 users labeled (free: 1, pro: 2); 2 without a label" in summary
    assert "label 'tier': 4 users labeled (1: 1, 2: 3); 1 without a label" in summary
    invalid = read_behavior_log(log, labels=labels, label_classes={"plan": ["pro"]}, invalid_labels="missing")
    assert (
        "label 'plan': 2 users labeled (pro: 2); 3 without a label (1 invalid, set missing)" in invalid.report.summary()
    )


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def load_reports():
    """What transformers' loader logs, as it reaches its handlers."""
    handler, logger = Records(), logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_a_new_head_gets_one_line_not_a_missing_weights_table(tmp_path, load_reports, caplog):
    from ptum_hf.finetuning import load_head_model

    PTUMForPretraining(tiny_config()).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="ptum_hf"):
        load_head_model(PTUMForDemographicClassification, tmp_path)
        load_head_model(PTUMForCTR, tmp_path)
    assert not [m for m in load_reports if "LOAD REPORT" in m]
    lines = [r.getMessage() for r in caplog.records if "freshly initialised" in r.getMessage()]
    assert len(lines) == 2 and "the head (classifier) is freshly initialised" in lines[0]
    assert "has no PTUMForCTR head: the head (ad_pooling.proj, ad_pooling.query" in lines[1]


def test_unexpected_and_mismatched_weights_are_still_reported(tmp_path, load_reports):
    from ptum_hf.finetuning import load_head_model

    PTUMForCTR(tiny_config()).save_pretrained(tmp_path / "ctr")
    load_head_model(PTUMForDemographicClassification, tmp_path / "ctr")  # the CTR head's weights are unexpected
    assert len(load_reports) == 1 and "UNEXPECTED" in load_reports[0] and "ad_projection" in load_reports[0]
    PTUMForDemographicClassification(tiny_config()).save_pretrained(tmp_path / "head")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        load_head_model(PTUMForDemographicClassification, tmp_path / "head", label_heads={"plan": 3})
    assert len(load_reports) == 2 and "MISMATCH" in load_reports[1]
