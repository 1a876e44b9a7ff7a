import math

import numpy as np
import pytest
from huggingface_hub import ModelCard
from transformers import TrainerControl, TrainerState, TrainingArguments

from ptum_hf import PTUMForDemographicClassification
from ptum_hf.modelcard import TEMPLATE_PATH, ModelCardCallback, PTUMModelCardData, create_model_card

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
    assert results["age_accuracy"].task_type == "text-classification"


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
