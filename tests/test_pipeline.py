"""The user's main job end to end on tiny settings: pre-train (CLI), fine-tune three ways, CTR, embed."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ptum_hf import PTUMModel
from ptum_hf.cli import main as cli
from ptum_hf.data import load_behavior_data
from ptum_hf.finetuning import FinetuneArguments, default_training_arguments, finetune
from ptum_hf.pretraining import PretrainingArguments

from conftest import TINY

USERS = 160


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    settings = {
        "output_dir": str(out),
        "num_users": USERS,
        "max_steps": 6,
        "save_steps": 3,
        "eval_steps": 3,
        "logging_steps": 2,
        "per_device_batch_size": 16,
        "tokenizer_vocab_size": 400,
        "report_to": "csv",
        "config_overrides": json.dumps(TINY),
    }
    config_file = out / "run.json"
    config_file.write_text(json.dumps(settings))
    cli(["pretrain", str(config_file)])  # arguments from a JSON file, as a user would keep them
    return out


@pytest.fixture(scope="module")
def data():
    return load_behavior_data("synthetic", num_users=USERS)


def test_pretraining_writes_model_tokenizer_card_logs_and_checkpoints(pretrained):
    model_dir = pretrained / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "modeling_ptum.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    card = (model_dir / "README.md").read_text()
    assert "model-index" in card and "Masked Behavior Prediction" in card
    assert "Pre-training (held-out users)\n\nNot recorded" not in card
    logged = pd.read_csv(pretrained / "logs" / "metrics.csv")
    assert {"loss", "mbp_loss", "nbp_loss", "eval_mbp_accuracy"} <= set(logged["key"])
    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir()) == ["step_3", "step_6"]
    metrics = json.loads((model_dir / "pretraining_metrics.json").read_text())
    assert metrics["step"] == 6 and 0.0 <= metrics["eval_mbp_accuracy"] <= 1.0
    assert PTUMModel.from_pretrained(model_dir).config.hidden_size == 16


@pytest.mark.parametrize("variant", ["scratch", "frozen", "finetune"])
def test_demographics_three_ways(pretrained, data, tmp_path, variant):
    model_dir = pretrained / "model"
    args = FinetuneArguments(
        model_name_or_path=str(model_dir),
        label_fraction=0.5,
        from_scratch=variant == "scratch",
        freeze_user_model=variant == "frozen",
    )
    training_args = default_training_arguments(
        str(tmp_path), "demographics", num_train_epochs=1, per_device_train_batch_size=16
    )
    trainer, metrics = finetune(args, training_args, data=data)
    for key in ("test_age_accuracy", "test_age_macro_f1", "test_gender_accuracy", "test_gender_macro_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    pretrained_weights = load_file(model_dir / "model.safetensors")
    user_model = {k: v for k, v in trainer.model.state_dict().items() if k.startswith("ptum.")}
    same = all(torch.equal(v, pretrained_weights[k]) for k, v in user_model.items())
    assert same == (variant == "frozen")  # frozen keeps the user model; the others train (or re-draw) it


def test_user_model_learning_rate_is_its_own_optimizer_group(pretrained, data, tmp_path):
    args = FinetuneArguments(model_name_or_path=str(pretrained / "model"), user_model_learning_rate=1e-5)
    training_args = default_training_arguments(
        str(tmp_path),
        "demographics",
        num_train_epochs=1,
        learning_rate=1e-3,
        per_device_train_batch_size=16,
        weight_decay=0.01,
    )
    trainer, _ = finetune(args, training_args, data=data)
    model = trainer.model
    user_model = {id(p) for p in model.ptum.parameters()}
    by_lr = {}
    for group in trainer.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= user_model or not ids & user_model, "a group mixes the user model and the head"
        by_lr.setdefault(group["initial_lr"], set()).update(ids)
    assert by_lr[1e-5] == user_model and by_lr[1e-3] == {id(p) for p in model.parameters()} - user_model
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0, 0.01}  # the Trainer's own groups
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 1e-3  # the one the Trainer logs: the head's
    from ptum_hf.finetuning import PTUMTrainer

    own = PTUMTrainer(
        model=model,
        args=trainer.args,
        eval_dataset=trainer.eval_dataset,
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
        user_model_learning_rate=1e-5,
    )
    with pytest.raises(ValueError, match="an optimizer was passed in"):
        own.create_optimizer()
    with pytest.raises(ValueError, match="user_model_learning_rate has no effect with freeze_user_model"):
        FinetuneArguments(model_name_or_path="x", freeze_user_model=True, user_model_learning_rate=1e-5)
    with pytest.raises(ValueError, match="user_model_learning_rate must be > 0"):
        FinetuneArguments(user_model_learning_rate=0.0)


def test_new_demographic_heads_get_a_layer_norm_and_saved_heads_keep_theirs(pretrained, tmp_path):
    from ptum_hf.finetuning import build_model

    heads = {"age": 4, "gender": 2}
    base = str(pretrained / "model")
    norm = build_model(FinetuneArguments(model_name_or_path=base), None, heads).norm
    assert isinstance(norm, torch.nn.LayerNorm)  # missing from the checkpoint: initialised, not left as memory
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
        norm.bias, torch.zeros_like(norm.bias)
    )
    plain = build_model(FinetuneArguments(model_name_or_path=base, classifier_layer_norm=False), None, heads)
    assert isinstance(plain.norm, torch.nn.Identity)
    plain.save_pretrained(tmp_path / "head")  # a fine-tuned model without the norm: loading it must not add one
    again = build_model(FinetuneArguments(model_name_or_path=str(tmp_path / "head")), None, heads)
    assert isinstance(again.norm, torch.nn.Identity)
    scratch = build_model(FinetuneArguments(model_name_or_path=str(tmp_path / "head"), from_scratch=True), None, heads)
    assert isinstance(scratch.norm, torch.nn.LayerNorm)  # a new head again


def test_label_fraction_takes_a_nested_share_of_training_users(data):
    from ptum_hf.data.splits import demographics_splits

    heads = FinetuneArguments().head_names
    small = demographics_splits(data, heads, label_fraction=0.2)[0]
    large = demographics_splits(data, heads, label_fraction=0.5)[0]
    full, validation, test = demographics_splits(data, heads, label_fraction=1.0)
    assert len(small) == round(0.2 * len(full)) and len(large) == round(0.5 * len(full))
    assert set(small["user_id"]) <= set(large["user_id"]) <= set(full["user_id"])
    assert not set(full["user_id"]) & set(test["user_id"]) and not set(validation["user_id"]) & set(test["user_id"])


def test_ctr_finetuning(pretrained, data, tmp_path):
    args = FinetuneArguments(task="ctr", model_name_or_path=str(pretrained / "model"), max_eval_samples=50)
    training_args = default_training_arguments(str(tmp_path), "ctr", num_train_epochs=1, per_device_train_batch_size=32)
    trainer, metrics = finetune(args, training_args, data=data)
    assert 0.0 <= metrics["test_auc"] <= 1.0 and 0.0 <= metrics["test_ap"] <= 1.0
    assert len(trainer.eval_dataset) == 50 < len(data.ctr["validation"])  # model selection on a subset


def test_eval_subset_is_a_seeded_ordered_sample_of_validation(data):
    from ptum_hf.data.splits import eval_subset

    validation = data.ctr["validation"].add_column("row", list(range(len(data.ctr["validation"]))))
    part = eval_subset(validation, 40, seed=3)
    assert len(set(part["row"])) == 40 and part["row"] == sorted(part["row"])  # distinct rows, in their order
    assert part["row"] == eval_subset(validation, 40, seed=3)["row"] != eval_subset(validation, 40, seed=4)["row"]
    assert eval_subset(validation, None, 0) is validation and eval_subset(validation, 10**9, 0) is validation
    with pytest.raises(ValueError, match="max_eval_samples must be >= 1"):
        FinetuneArguments(max_eval_samples=0)


def test_embed_with_and_without_cache_agree(pretrained, tmp_path):
    common = ["--model_name_or_path", str(pretrained / "model"), "--num_users", str(USERS), "--batch_size", "64"]
    cli(["embed", *common, "--output_file", str(tmp_path / "cached.parquet")])
    cli(["embed", *common, "--output_file", str(tmp_path / "plain.parquet"), "--no_cache", "true"])
    cached, plain = pd.read_parquet(tmp_path / "cached.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    assert len(cached) == USERS and list(cached["user_id"]) == list(plain["user_id"])
    np.testing.assert_allclose(np.stack(cached["embedding"]), np.stack(plain["embedding"]), atol=1e-5)
    assert not list(tmp_path.glob(".tmp-*"))


def test_embeddings_come_back_in_user_order_whatever_the_batching(pretrained, data, monkeypatch):
    """Users are encoded sorted by history length: every vector must still land on its own user."""
    from transformers import AutoTokenizer

    from ptum_hf import embedding
    from ptum_hf.data import BehaviorTokenCache

    model = PTUMModel.from_pretrained(pretrained / "model")
    cache = BehaviorTokenCache.build(
        data.behaviors, AutoTokenizer.from_pretrained(pretrained / "model"), model.config.max_tokens_per_behavior
    )
    monkeypatch.setattr(embedding, "SORT_WINDOW_BATCHES", 3)  # several windows, the last one partial
    ids, vectors = zip(*embedding.iter_user_embeddings(model, data, cache, batch_size=7))
    ids, vectors = sum(ids, []), np.concatenate(vectors)
    assert ids == list(data.users["user_id"])
    table = embedding.encode_behavior_table(model, cache)
    for row in (0, 20, 21, USERS - 1):  # each user alone: no batch, no padding
        _, history, gaps = embedding.user_collator(model, cache).histories([data.users[row]])
        with torch.inference_mode():
            alone = model(
                history_indices=torch.from_numpy(history),
                history_time_gaps=torch.from_numpy(gaps),
                behavior_embeddings=table,
            )
        np.testing.assert_allclose(vectors[row], alone.user_embeddings[0].numpy(), atol=1e-5)


def test_finetune_cli_saves_model_with_card_and_group_error_rates(pretrained, tmp_path):
    cli(
        [
            "finetune",
            "demographics",
            "--model_name_or_path",
            str(pretrained / "model"),
            "--num_users",
            str(USERS),
            "--output_dir",
            str(tmp_path),
            "--num_train_epochs",
            "1",
        ]
    )
    card = (tmp_path / "model" / "README.md").read_text()
    assert "age_accuracy" in card and "**Not measured.**" not in card
    assert type(PTUMModel.from_pretrained(tmp_path / "model")) is PTUMModel


def test_bad_arguments_are_refused_clearly(capsys):
    with pytest.raises(SystemExit):  # argparse's choices: the message names the allowed presets
        cli(["pretrain", "--preset", "sasrec"])
    assert "invalid choice: 'sasrec'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset must be one of"):
        PretrainingArguments(preset="sasrec")
    with pytest.raises(ValueError, match="config_overrides is not valid JSON"):
        cli(["pretrain", "--config_overrides", "{nope"])
    with pytest.raises(ValueError, match="label_fraction must be in"):
        FinetuneArguments(label_fraction=0.0)


def test_push_cli_sends_model_tokenizer_card_and_code(pretrained, monkeypatch):
    from test_hub import RecordedHfApi

    from ptum_hf import hub

    api = RecordedHfApi()
    monkeypatch.setattr(hub, "HfApi", lambda token=None: api)
    cli(["push", str(pretrained / "model"), "--repo_id", "my-org/ptum-tiny"])
    assert [c[:2] for c in api.calls] == [("create_repo", "my-org/ptum-tiny"), ("upload_folder", "my-org/ptum-tiny")]
    sent = set(api.uploaded)
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "tokenizer.json",
        "modeling_ptum.py",
        "configuration_ptum.py",
    } <= sent
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in sent)
    # The card that goes up is the saved card, not a card made of its path.
    assert api.uploaded["README.md"].decode() == (pretrained / "model" / "README.md").read_text()


def test_cli_help_exits_zero(capsys):
    cli(["--help"])
    assert "ptum-hf pretrain" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="usage: ptum-hf"):
        cli(["no-such-command"])


def test_training_arguments_follow_a_changed_eval_strategy(tmp_path):
    args = default_training_arguments(str(tmp_path), "demographics", eval_strategy="no")
    assert args.load_best_model_at_end is False and args.save_strategy == "epoch"
    args = default_training_arguments(str(tmp_path), "ctr", eval_strategy="steps", eval_steps=5)
    assert args.load_best_model_at_end is False  # saves per epoch, evaluates per step: no best checkpoint to reload
    assert default_training_arguments(str(tmp_path), "ctr").load_best_model_at_end is True
