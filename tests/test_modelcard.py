import math

import numpy as np
import pytest
from huggingface_hub import ModelCard
from transformers import TrainerControl, TrainerState, TrainingArguments

from ptum_hf import PTUMForCTR, PTUMForDemographicClassification, PTUMForPretraining, PTUMModel
from ptum_hf.modelcard import (
    TEMPLATE_PATH,
    USER_CLASSIFICATION_TAG,
    ModelCardCallback,
    PTUMModelCardData,
    create_model_card,
    dataset_reference,
)

from conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    return PTUMForDemographicClassification(tiny_config(vocab_size=50, max_behaviors=10, dropout=0.2))


def test_template_is_found_through_the_package():
    assert TEMPLATE_PATH.is_file()
    assert TEMPLATE_PATH.parent.name == "templates"


def test_empty_card_says_what_was_not_measured():
    content = create_model_card().content
    assert "AutoModel.from_pretrained" in content and "trust_remote_code=True" in content
    assert "from ptum_hf import PTUMModel" in content
    assert "Sensitive inferences: age and gender" in content
    assert "**Not measured.**" in content
    assert "model-index" not in content
    assert "10.18653/v1/2020.findings-emnlp.174" in content  # the paper is cited


def test_trainer_callback_records_args_model_and_metrics(model, tmp_path):
    card_data = PTUMModelCardData(model_id="org/ptum-demographics", language="en", license="apache-2.0")
    callback = ModelCardCallback(card_data, dataset="toy-users")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-4, per_device_train_batch_size=8, seed=7)
    state, control = TrainerState(), TrainerControl()

    callback.on_train_begin(args, state, control, model=model)
    state.global_step, state.epoch = 10, 1.0
    callback.on_evaluate(
        args,
        state,
        control,
        metrics={
            "eval_loss": 1.3,
            "eval_accuracy": np.float64(0.5),
            "eval_age_accuracy": 0.4,
            "eval_gender_auc": float("nan"),
            "eval_runtime": 0.2,
            "epoch": 1.0,
        },
    )
    state.global_step = 20
    metrics = {"eval_loss": 1.1, "eval_accuracy": 0.6, "eval_age_accuracy": 0.5}
    callback.on_evaluate(args, state, control, metrics=metrics)

    assert card_data.model_class == "PTUMForDemographicClassification"
    assert card_data.label_heads == {"age": 4, "gender": 2}
    assert card_data.hyperparameters["hidden_size"] == 16
    assert card_data.training_args["learning_rate"] == 3e-4
    assert card_data.training_args["seed"] == 7
    assert "max_steps" not in card_data.training_args  # -1: trained by epochs
    assert len(card_data.evaluation_log) == 2
    assert "runtime" not in card_data.evaluation_log[0]

    # The model-index holds the last evaluation's task metrics, not the loss.
    results = {r.metric_name: r for r in card_data.eval_results}
    assert set(results) == {"accuracy", "age_accuracy"}
    assert results["accuracy"].metric_value == 0.6
    assert results["accuracy"].dataset_split == "eval"
    assert results["age_accuracy"].task_type == USER_CLASSIFICATION_TAG


def test_card_renders_data_pretraining_and_group_error_rates(model):
    card_data = PTUMModelCardData(model_id="org/ptum-demographics", base_model="org/ptum-pretrained")
    card_data.record_dataset(
        "toy-users",
        {"users": 1200, "behaviors": 53211, "unique_behaviors": np.int64(9000)},
        dataset_id="org/toy-users",
        role="fine-tuning",
    )
    card_data.record_pretraining(
        {"eval_mbp_loss": 1.25, "eval_mbp_accuracy": 0.51, "eval_nbp_loss": 1.5, "eval_nbp_accuracy": 0.42},
        step=100,
        dataset="toy-users",
    )
    card_data.record_eval({"eval_accuracy": 0.6, "eval_gender_auc": 0.7}, dataset="toy-users")
    card_data.record_group_error_rates(
        {"age": {"gender": {"female": {"error_rate": 0.25, "count": 40}, "male": {"error_rate": 0.5, "count": 20}}}},
        dataset="toy-users (test)",
    )
    card = create_model_card(card_data, model=model)
    content = card.content

    assert "| users | 1,200 |" in content and "| unique behaviors | 9,000 |" in content
    assert "| step | mbp_loss | mbp_accuracy | nbp_loss | nbp_accuracy |" in content
    assert "| 100 | 1.25 | 0.51 | 1.5 | 0.42 |" in content
    assert "| age | gender | male | 0.5 | 20 |" in content
    assert "Not measured" not in content
    assert "from ptum_hf import PTUMForDemographicClassification" in content
    assert card_data.command in content
    assert f"transformers: {card_data.versions['transformers']}" in content

    # The YAML header parses back into the same evaluation results.
    data = ModelCard(content).data
    assert data.base_model == "org/ptum-pretrained"
    assert data.datasets == ["org/toy-users"]
    assert data.library_name == "transformers"
    parsed = {(r.task_name, r.metric_name): r.metric_value for r in data.eval_results}
    assert parsed[("User model pre-training (MBP + NBP)", "mbp_accuracy")] == 0.51
    assert parsed[("Demographic prediction from user behavior", "gender_auc")] == 0.7
    assert {r.dataset_type for r in data.eval_results} == {"org/toy-users"}


def test_nan_metrics_stay_out_of_the_model_index():
    card_data = PTUMModelCardData()
    card_data.record_eval({"eval_auc": float("nan"), "eval_ap": 0.3})
    assert [r.metric_name for r in card_data.eval_results] == ["ap"]
    assert card_data.eval_results[0].metric_type == "average_precision"
    assert math.isnan(card_data.evaluation_log[0]["auc"])
    assert "| n/a |" in create_model_card(card_data).content


def _card(card_data, model=None):
    card = create_model_card(card_data, model=model)
    return card.content, ModelCard(card.content).data


def test_results_name_the_dataset_a_log_by_its_file_name(model, tmp_path):
    log = tmp_path / "private-folder" / "user_logs.csv"
    card_data = PTUMModelCardData()
    card_data.record_eval({"eval_accuracy": 0.5}, step=5)  # what the Trainer callback records: no dataset
    card_data.record_eval({"test_accuracy": 0.6}, dataset=str(log))
    card_data.record_group_error_rates(
        {"age": {"gender": {"f": {"error_rate": 0.5, "count": 2}}}}, dataset=f"{log} (test users)"
    )
    content, data = _card(card_data, model)
    assert {r.dataset_name for r in data.eval_results} == {"user_logs.csv"}
    assert "name: unknown" not in content and "type: unknown" not in content
    assert "private-folder" not in content  # the log's folder stays on the machine that trained
    assert "### user_logs.csv" in content and "measured on user_logs.csv (test users)" in content
    assert data.datasets is None  # a local file is no Hub dataset


def test_results_of_a_built_in_source_name_it(model):
    card_data = PTUMModelCardData()
    card_data.record_pretraining({"eval_mbp_accuracy": 0.5}, step=10)  # the pre-training loop records no dataset
    card_data.record_dataset("synthetic", {"users": 200})
    content, data = _card(card_data, model)
    assert {r.dataset_name for r in data.eval_results} == {"synthetic"}
    assert "name: unknown" not in content and "type: unknown" not in content
    assert "Held-out users of synthetic." in content


def test_a_hub_dataset_id_becomes_the_datasets_metadata(model):
    card_data = PTUMModelCardData()
    card_data.record_eval({"test_accuracy": 0.6}, dataset="org/user-logs")
    content, data = _card(card_data, model)
    assert data.datasets == ["org/user-logs"]
    assert {r.dataset_type for r in data.eval_results} == {"org/user-logs"}
    assert "https://huggingface.co/datasets/org/user-logs" in content


@pytest.mark.parametrize(
    "source, expected",
    [
        ("synthetic", ("synthetic", None)),
        ("movielens-100k", ("movielens-100k", None)),
        ("/data/alice/logs.parquet", ("logs.parquet", None)),
        ("exports/logs.csv", ("logs.csv", None)),
        ("/data/alice/logs/*.csv", ("logs/*.csv", None)),
        ("org/user-logs", ("org/user-logs", "org/user-logs")),
    ],
)
def test_dataset_reference(source, expected):
    assert dataset_reference(source) == expected


def test_a_local_base_model_is_not_linked(model, tmp_path):
    local = tmp_path / "outputs" / "pretrain" / "model"
    local.mkdir(parents=True)
    content, data = _card(PTUMModelCardData(base_model=str(local)), model)
    assert data.base_model is None
    assert "fine-tuned from a local checkpoint" in content
    assert str(local) not in content and "huggingface.co/" + str(local) not in content

    content, data = _card(PTUMModelCardData(base_model="org/ptum-pretrained"), model)
    assert data.base_model == "org/ptum-pretrained"
    assert "fine-tuned from [org/ptum-pretrained](https://huggingface.co/org/ptum-pretrained)" in content


@pytest.mark.parametrize(
    "model_class, pipeline_tag, tag",
    [
        (PTUMModel, "feature-extraction", None),
        (PTUMForPretraining, "feature-extraction", "pretraining"),
        (PTUMForDemographicClassification, USER_CLASSIFICATION_TAG, "demographic-prediction"),
        (PTUMForCTR, USER_CLASSIFICATION_TAG, "click-through-rate"),
    ],
)
def test_hub_metadata_of_each_task(model_class, pipeline_tag, tag):
    _, data = _card(PTUMModelCardData(), model_class(tiny_config()))
    assert data.pipeline_tag == pipeline_tag
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert {"ptum", "user-modeling"} <= set(data.tags)
    assert tag is None or tag in data.tags


def test_the_license_can_be_overridden(model):
    content, data = _card(PTUMModelCardData(license="cc-by-nc-4.0"), model)
    assert data.license == "cc-by-nc-4.0"
    assert "`cc-by-nc-4.0`" in content


@pytest.mark.parametrize(
    "switches, described, not_described, loss",
    [
        ({}, ["Masked Behavior Prediction", "Next K Behavior Prediction"], ["Bag prediction"], "MBP + λ · NBP."),
        (
            {"use_mbp": False, "use_nbp": False, "use_bag": True},
            ["Bag prediction"],
            ["Masked Behavior"],
            "`bag_weight` · bag prediction.",
        ),
        (
            {"use_nbp": False, "use_bag": True},
            ["Masked Behavior Prediction", "Bag prediction"],
            ["Next K"],
            "MBP + `bag_weight` · bag prediction.",
        ),
    ],
)
def test_the_card_describes_the_objectives_the_model_was_pre_trained_with(switches, described, not_described, loss):
    content = create_model_card(model=PTUMForPretraining(tiny_config(vocab_size=50, **switches))).content
    assert all(text in content for text in described) and not any(text in content for text in not_described)
    assert f"**Pre-training loss**: {loss}" in content
