"""A new demographic head starts at a linear probe of the user vectors (`fit_head`, LP-FT)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ptum_hf import PTUMConfig, PTUMForDemographicClassification, PTUMModel
from ptum_hf.data import BehaviorTokenCache, load_behavior_data, train_behavior_tokenizer
from ptum_hf.data.splits import demographics_splits
from ptum_hf.finetuning import FinetuneArguments, build_collator, build_model, default_training_arguments, finetune
from ptum_hf.head_fitting import classifier_inputs, fit_classifier

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


def test_the_fitted_head_is_the_logistic_regression_of_its_standardised_inputs(setup):
    data, tokenizer, config, collator, (train, validation, test) = setup
    torch.manual_seed(0)
    model = PTUMForDemographicClassification(config)
    chosen = fit_classifier(model, collator, train, validation)
    assert set(chosen) == set(HEADS)
    x_train, y_train = classifier_inputs(model, collator, train)
    x_test, _ = classifier_inputs(model, collator, test)
    mean, scale = x_train.mean(0), x_train.std(0)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in collator([test[i] for i in range(len(test))]).items() if k != "labels"})
    for column, (head, head_logits) in enumerate(model.split_logits(logits.logits).items()):
        expected = LogisticRegression(C=chosen[head], max_iter=2000).fit((x_train - mean) / scale, y_train[:, column])
        probabilities = expected.predict_proba((x_test - mean) / scale)
        assert np.allclose(head_logits.softmax(-1).numpy()[:, expected.classes_], probabilities, atol=1e-4), head


def test_a_head_with_one_training_class_keeps_its_random_start(setup):
    data, tokenizer, config, collator, (train, validation, _) = setup
    one_class = train.filter(lambda row: row["gender"] == train[0]["gender"])
    model = PTUMForDemographicClassification(config)
    before = model.classifier.weight.detach().clone()
    assert set(fit_classifier(model, collator, one_class, validation)) == {"age"}
    assert torch.equal(model.classifier.weight[4:], before[4:]) and not torch.equal(model.classifier.weight, before)


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
