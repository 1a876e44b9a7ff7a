"""A new demographic head starts at a linear probe of the user vectors (`fit_head`, LP-FT), and fine-tuning returns
that start when it does not beat it (`keep_fitted_start`)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ptum_hf import PTUMConfig, PTUMForDemographicClassification, PTUMModel
from ptum_hf.data import BehaviorTokenCache, load_behavior_data, train_behavior_tokenizer
from ptum_hf.data.splits import demographics_splits
from ptum_hf.finetuning import FinetuneArguments, build_collator, build_model, default_training_arguments, finetune
from ptum_hf.head_fitting import classifier_inputs, fit_classifier
from ptum_hf.keep_start import kept_fitted_start

from conftest import TINY

HEADS = {"age": 4, "gender": 2}


@pytest.fixture(scope="module")
def setup():
    data = load_behavior_data("synthetic", num_users=160)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=300)
    config = PTUMConfig.from_preset(
        "hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, label_heads=HEADS, **TINY
    )
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, config.max_tokens_per_behavior)
    collator = build_collator(FinetuneArguments(), data, tokenizer, config, cache)
    return data, tokenizer, config, collator, demographics_splits(data, list(HEADS))


def _test_logits(model, collator, users):
    model.eval()
    with torch.no_grad():
        batch = collator([users[i] for i in range(len(users))])
        return model.split_logits(model(**{k: v for k, v in batch.items() if k != "labels"}).logits)


def test_the_fitted_head_is_the_logistic_regression_of_its_standardised_inputs(setup):
    data, tokenizer, config, collator, (train, validation, test) = setup
    # Some users lack a gender (left out of that head's fit); no training user is in the last age bucket.
    train = train.filter(lambda row: row["age"] != 3).map(
        lambda row, i: {"gender": None if i % 7 == 0 else row["gender"]}, with_indices=True
    )
    torch.manual_seed(0)
    model = PTUMForDemographicClassification(config).train()
    chosen = fit_classifier(model, collator, train, validation)
    assert set(chosen) == set(HEADS) and model.training  # the mode the model was in is given back
    x_train, y_train = classifier_inputs(model, collator, train)
    x_test, _ = classifier_inputs(model, collator, test)
    assert (y_train[:, 1] == -100).sum() == len(range(0, len(train), 7)) and 3 not in y_train[:, 0]
    mean, scale = x_train.mean(0), x_train.std(0)
    for column, (head, head_logits) in enumerate(_test_logits(model, collator, test).items()):
        keep = y_train[:, column] != -100
        expected = LogisticRegression(C=chosen[head], max_iter=2000)
        expected.fit((x_train[keep] - mean) / scale, y_train[keep, column])
        probabilities = expected.predict_proba((x_test - mean) / scale)
        assert np.allclose(head_logits.softmax(-1).numpy()[:, expected.classes_], probabilities, atol=1e-3), head
    age_rows = model.classifier.weight[:4]
    assert not age_rows[3].any() and age_rows[:3].abs().sum(-1).min() > 0  # the absent class: no weights ...
    assert model.classifier.bias[3] < model.classifier.bias[:3].min()  # ... and the lowest bias


def test_a_head_that_cannot_be_fitted_keeps_its_random_start(setup, caplog):
    data, tokenizer, config, collator, (train, validation, test) = setup
    one_age = train.filter(lambda row: row["age"] == train[0]["age"])
    model = PTUMForDemographicClassification(config)
    before = model.classifier.weight.detach().clone()
    assert set(fit_classifier(model, collator, one_age, validation)) == {"gender"}  # the next head's rows still fit
    assert torch.equal(model.classifier.weight[:4], before[:4]) and not torch.equal(model.classifier.weight, before)
    assert "head age keeps its random start" in caplog.text
    unlabeled = validation.map(lambda row: {"gender": None})
    assert set(fit_classifier(PTUMForDemographicClassification(config), collator, train, unlabeled)) == {"age"}
    with pytest.raises(ValueError, match="at least one user in each"):
        fit_classifier(model, collator, train, validation.select([]))


def test_fine_tuning_starts_a_new_head_at_the_probe_and_keeps_a_trained_one(setup, tmp_path):
    data, tokenizer, config, collator, (train, validation, _) = setup
    user_model = PTUMModel(config)
    user_model.save_pretrained(tmp_path / "user")
    tokenizer.save_pretrained(tmp_path / "user")

    def start(checkpoint, fit_head=True):
        """The model as fine-tuning from `checkpoint` starts it: no step moves a weight at a learning rate of 0."""
        args = FinetuneArguments(model_name_or_path=str(tmp_path / checkpoint), num_users=160, fit_head=fit_head)
        no_steps = dict(max_steps=1, learning_rate=0.0, eval_strategy="no", save_strategy="no")
        training_args = default_training_arguments(str(tmp_path / "out"), "demographics", **no_steps)
        return finetune(args, training_args, data=data, tokenizer=tokenizer)[0].model

    fitted = start("user")
    torch.manual_seed(0)
    expected = build_model(FinetuneArguments(model_name_or_path=str(tmp_path / "user")), tokenizer, HEADS)
    fit_classifier(expected, collator, train, validation)
    assert torch.allclose(fitted.classifier.weight, expected.classifier.weight, atol=1e-5)
    assert torch.allclose(fitted.classifier.bias, expected.classifier.bias, atol=1e-5)
    assert not torch.allclose(start("user", fit_head=False).classifier.weight, expected.classifier.weight)
    with torch.no_grad():
        fitted.classifier.weight.add_(1.0)  # as a trained head's would differ from a fresh fit
    fitted.save_pretrained(tmp_path / "trained")
    tokenizer.save_pretrained(tmp_path / "trained")
    assert torch.equal(start("trained").classifier.weight, fitted.classifier.weight)


@pytest.mark.parametrize("greater_is_better", [True, False])
def test_the_start_is_returned_only_when_it_beats_the_model_training_ends_with(tmp_path, greater_is_better, caplog):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ptum_hf.keep_start import KeepStartCallback

    sign = 1 if greater_is_better else -1
    args = TrainingArguments(
        str(tmp_path),
        metric_for_best_model="eval_auc",  # named as the Trainer allows, with or without the prefix
        greater_is_better=greater_is_better,
        load_best_model_at_end=True,
        eval_strategy="steps",
        save_strategy="steps",
        report_to="none",
    )

    def run(history, checkpoint=None, last_step=20):
        """The start scores 0.7; `history`: {step: score} of the evaluations during training."""
        model, callback, state = torch.nn.Linear(2, 1), KeepStartCallback(), TrainerState()
        start = model.weight.detach().clone()
        callback.on_train_begin(args, state, TrainerControl())
        callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_auc": sign * 0.7}, model=model)
        state.log_history = [{"eval_auc": sign * 0.7, "step": 0}]
        state.log_history += [{"eval_auc": sign * score, "step": step} for step, score in history.items()]
        with torch.no_grad():
            model.weight.add_(1.0)  # training moved it
        state.global_step, state.best_model_checkpoint = last_step, checkpoint and str(tmp_path / checkpoint)
        callback.on_train_end(args, state, TrainerControl(), model=model)
        assert callback.start is None  # the snapshot is not held after training
        assert torch.equal(model.weight, start) is callback.kept
        return callback.kept

    assert run({10: 0.6, 20: 0.65}, "checkpoint-20")  # the loaded best scores below the start
    assert not run({10: 0.8, 20: 0.6}, "checkpoint-10")  # ... above it
    assert not run({10: 0.7, 20: 0.6}, "checkpoint-10")  # a tie keeps the fine-tuned model
    # The score compared is the loaded checkpoint's, not the best evaluation's (which may have no checkpoint).
    assert run({10: 0.8, 20: 0.6}, "checkpoint-20")
    assert not run({10: 0.6, 20: 0.8})  # no checkpoint loaded: the last step's evaluation
    assert not run({10: 0.6}) and "was not evaluated" in caplog.text  # ... and none at the last step: nothing compared
    with pytest.raises(ValueError, match="'eval_auc' is not among the evaluation metrics"):
        KeepStartCallback().on_evaluate(args, TrainerState(), TrainerControl(), metrics={"eval_f1": 1.0}, model=None)


def test_fine_tuning_that_only_hurts_ends_at_the_fitted_start(setup, tmp_path, caplog):
    data, tokenizer, config, collator, (train, validation, _) = setup
    PTUMModel(config).save_pretrained(tmp_path / "user")
    tokenizer.save_pretrained(tmp_path / "user")

    def finetuned(keep):
        args = FinetuneArguments(
            model_name_or_path=str(tmp_path / "user"), num_users=160, freeze_user_model=True, keep_fitted_start=keep
        )
        # Steps so large that training can only hurt (the head alone, so that its logits stay finite).
        wreck = dict(num_train_epochs=2, learning_rate=30.0, lr_scheduler_type="constant", save_total_limit=None)
        training_args = default_training_arguments(str(tmp_path / f"out-{keep}"), "demographics", **wreck)
        trainer = finetune(args, training_args, data=data, tokenizer=tokenizer)[0]
        return trainer.model, trainer.state.log_history, kept_fitted_start(trainer)

    torch.manual_seed(0)
    expected = build_model(FinetuneArguments(model_name_or_path=str(tmp_path / "user")), tokenizer, HEADS)
    fit_classifier(expected, collator, train, validation)
    model, history, kept = finetuned(keep=True)
    scores = [(row["step"], row["eval_macro_f1"]) for row in history if "eval_macro_f1" in row]
    assert scores[0][0] == 0 and max(score for _, score in scores[1:]) < scores[0][1]  # evaluated at its start
    assert kept and "returning the fitted start" in caplog.text
    for name, value in expected.state_dict().items():
        assert torch.allclose(model.state_dict()[name], value, atol=1e-5), name
    model, _, kept = finetuned(keep=False)
    assert not kept and not torch.allclose(model.classifier.weight, expected.classifier.weight, atol=1e-3)
