"""Determinism on CPU: the same seed and data give the same loss curve and weights, for pre-training (Accelerate loop)
and for fine-tuning (`finetune`, the HF Trainer)."""

import json

import pytest
import torch
import transformers

from ptum_hf.cli import parse
from ptum_hf.data import load_behavior_data, train_behavior_tokenizer
from ptum_hf.finetuning import FinetuneArguments, default_training_arguments, finetune
from ptum_hf.pretraining import PretrainingArguments, pretrain

from conftest import TINY

USERS = 200
TIMING_WORDS = ("runtime", "per_second", "data_wait_share")  # wall-clock measurements, not results


@pytest.fixture(scope="module")
def data():
    return load_behavior_data("synthetic", num_users=USERS)


@pytest.fixture(scope="module")
def tokenizer_dir(data, tmp_path_factory):
    # One tokenizer for all runs, as pre-training saves it with the run and its checkpoints (its determinism across
    # processes is tests/test_data_tokenization.py's).
    folder = tmp_path_factory.mktemp("tokenizer")
    train_behavior_tokenizer(data.behaviors, vocab_size=500).save_pretrained(str(folder))
    return folder


def pretraining_run(output_dir, tokenizer_dir, seed: int):
    (args,) = parse(
        PretrainingArguments,
        [
            "--output_dir",
            str(output_dir),
            "--num_users",
            str(USERS),
            "--tokenizer_name",
            str(tokenizer_dir),
            "--per_device_batch_size",
            "16",
            "--max_steps",
            "15",
            "--eval_steps",
            "5",
            "--save_steps",
            "5",
            "--logging_steps",
            "1",
            "--report_to",
            "csv",
            "--config_overrides",
            json.dumps(TINY),
            "--seed",
            str(seed),
            "--deterministic",
            "true",
        ],
    )
    folder = pretrain(args)
    from safetensors.torch import load_file

    curve = [
        line
        for line in (output_dir / "logs" / "metrics.csv").read_text().splitlines()
        if not any(word in line for word in TIMING_WORDS)
    ]
    return curve, load_file(folder / "model.safetensors"), json.loads((folder / "pretraining_metrics.json").read_text())


def test_pretraining_same_seed_same_curve_and_weights(tmp_path, tokenizer_dir, one_thread):
    curve_a, weights_a, metrics_a = pretraining_run(tmp_path / "a", tokenizer_dir, seed=11)
    curve_b, weights_b, metrics_b = pretraining_run(tmp_path / "b", tokenizer_dir, seed=11)
    assert any(",loss," in line for line in curve_a) and any(",eval_loss," in line for line in curve_a)
    assert curve_a == curve_b  # every logged loss, accuracy, learning rate and evaluation, step by step
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    _, weights_c, _ = pretraining_run(tmp_path / "c", tokenizer_dir, seed=12)  # the seed matters
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


def finetuning_run(output_dir, data, tokenizer_dir, seed: int):
    args = FinetuneArguments(config_overrides=json.dumps(TINY), num_users=USERS)
    training_args = default_training_arguments(
        str(output_dir),
        "demographics",
        num_train_epochs=2,
        per_device_train_batch_size=32,
        logging_steps=1,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    trainer, metrics = finetune(args, training_args, data=data, tokenizer=tokenizer)
    results = {k: v for k, v in metrics.items() if not any(word in k for word in TIMING_WORDS)}
    history = [
        {k: v for k, v in entry.items() if not any(word in k for word in TIMING_WORDS)}
        for entry in trainer.state.log_history
    ]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return results, history, weights


def assert_same_run(run_a, run_b):
    (metrics_a, history_a, weights_a), (metrics_b, history_b, weights_b) = run_a, run_b
    assert any("loss" in entry for entry in history_a)
    assert history_a == history_b  # training losses, learning rates, validation metrics per epoch
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, f"{len(different)}/{len(weights_a)} tensors differ, e.g. {different[:3]}"


def test_finetuning_is_deterministic_once_the_initial_weights_are(tmp_path, data, tokenizer_dir, one_thread):
    """The Trainer part (shuffling, dropout, optimizer, evaluation) given the same initial weights."""
    runs = []
    for name in ("a", "b"):
        transformers.set_seed(5)  # finetune() draws the initial weights before the Trainer seeds anything
        runs.append(finetuning_run(tmp_path / name, data, tokenizer_dir, seed=5))
    assert_same_run(*runs)


def test_finetuning_same_seed_same_metrics_and_weights(tmp_path, data, tokenizer_dir, one_thread):
    torch.manual_seed(123)  # whatever state an earlier computation left
    run_a = finetuning_run(tmp_path / "a", data, tokenizer_dir, seed=5)
    run_b = finetuning_run(tmp_path / "b", data, tokenizer_dir, seed=5)
    assert_same_run(run_a, run_b)
