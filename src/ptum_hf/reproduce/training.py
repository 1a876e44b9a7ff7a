"""The user-model jobs: a pre-training (planned once per dataset, preset, pre-training setting and size, shared by
every grid that needs it) and a fine-tune (or from-scratch run) on one split."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import time
from pathlib import Path

from ..atomic import atomic_directory, atomic_write_json
from .jobs import Context, Job, log, quiet
from .settings import SYNTHETIC, variant_recipe


def pretraining_job(
    ctx: Context,
    experiment: str,
    dataset: str,
    preset: str,
    setting: dict,
    num_users: int | None = None,
    max_steps: int | None = None,
) -> tuple[Path, Job | None]:
    """Where the pre-training of (dataset, preset, setting, size) is saved, and the job that writes it there (None
    when it already exists), under `ctx.settings` (a cell's, `Context.for_cell`). Planned once: grids that need the
    same pre-training share its job."""
    s = ctx.settings
    overrides = {**s.model_overrides, **setting}
    users = num_users or s.synthetic_users
    steps = max_steps if max_steps is not None else s.pretrain_max_steps
    identity = pretraining_identity(s, dataset, preset, overrides, steps, users)
    tag = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    folder = ctx.work_dir / "pretrain" / f"{dataset}-{preset}-{tag}"
    model_dir = folder / "model"
    if (model_dir / "pretraining_metrics.json").exists():
        return model_dir, None
    if folder not in ctx.pretrainings:

        def done(_, seconds):
            ctx.timings[f"pretrain {dataset} {preset} {tag}"] = seconds
            log(f"pre-trained {preset} on {dataset}, setting {setting} ({seconds:.0f}s)")

        ctx.pretrainings[folder] = ctx.plan(Job(experiment, pretrain_run, (folder, identity), done))
    return model_dir, ctx.pretrainings[folder]


def pretraining_identity(s, dataset: str, preset: str, overrides: dict, steps: int, users: int | None) -> dict:
    """What decides a pre-training under settings `s` (a cell's): equal identities, equal models."""
    from .. import PRESETS

    # The preset's definition is part of the identity: a changed preset must not reuse an old pre-training.
    identity = {
        "dataset": dataset,
        "users": users if dataset == SYNTHETIC else None,
        "preset": preset,
        "preset_config": PRESETS[preset],
        "overrides": overrides,
        "epochs": s.pretrain_epochs,
        "steps": steps,
        "batch": s.pretrain_batch_size,
        "lr": s.pretrain_learning_rate,
        "vocab": s.tokenizer_vocab_size,
        "seed": s.seed,
    }
    if s.behavior_tokens != "text":
        identity["tokens"] = s.behavior_tokens
    return identity


def pretraining_arguments(identity: dict, folder: Path, data_dir: str | None, tokenizer_name: str | None = None):
    """The `PretrainingArguments` of the pre-training `identity` describes, saved under `folder`."""
    from ..pretraining import PretrainingArguments

    users = {"num_users": identity["users"]} if identity["users"] else {}  # only the synthetic source reads it
    return PretrainingArguments(
        output_dir=str(folder),
        dataset=identity["dataset"],
        data_dir=data_dir,
        **users,
        synthetic_seed=identity["seed"],
        preset=identity["preset"],
        config_overrides=json.dumps(identity["overrides"]),
        tokenizer_vocab_size=identity["vocab"],
        tokenizer_name=tokenizer_name,
        per_device_batch_size=identity["batch"],
        learning_rate=identity["lr"],
        num_epochs=identity["epochs"],
        max_steps=identity["steps"],
        eval_steps=10**9,
        save_steps=0,
        logging_steps=10**9,
        report_to="none",
        seed=identity["seed"],
    )


def pretrain_run(ctx: Context, folder: Path, identity: dict) -> dict:
    """The pre-training `identity` describes, saved under `folder`; returns its metrics."""
    from ..pretraining import pretrain

    dataset = identity["dataset"]
    start = time.perf_counter()
    tokenizer = item_tokenizer(ctx, dataset, identity["users"] or ctx.settings.synthetic_users)
    args = pretraining_arguments(identity, folder, ctx.data_name_dir(dataset), tokenizer)
    with quiet():
        pretrain(args)
    metrics = json.loads((folder / "model" / "pretraining_metrics.json").read_text())
    atomic_write_json(
        folder / "identity.json", {**identity, "metrics": metrics, "seconds": round(time.perf_counter() - start, 1)}
    )
    return metrics


def item_tokenizer(ctx: Context, dataset: str, users: int) -> str | None:
    """With `--behavior_tokens item`: a word-level tokenizer whose vocabulary is the distinct behavior texts, each
    whole text one token (no normaliser, no pre-tokeniser), saved once; None (train WordPiece) otherwise."""
    if ctx.settings.behavior_tokens != "item":
        return None
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    folder = ctx.work_dir / "tokenizers" / f"{dataset}-{users if dataset == SYNTHETIC else 'all'}-item"
    if not (folder / "tokenizer.json").exists():
        behaviors = ctx.data(dataset, users).behaviors
        vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2}
        for text in behaviors:
            vocab.setdefault(text, len(vocab))
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]")),
            pad_token="[PAD]",
            unk_token="[UNK]",
            mask_token="[MASK]",
        )
        with atomic_directory(folder) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return str(folder)


def pretraining_summary(ctx: Context) -> list[dict]:
    rows = []
    folder = ctx.work_dir / "pretrain"
    for path in sorted(folder.glob("*/identity.json")) if folder.exists() else []:
        rows.append(json.loads(path.read_text()))
    return rows


def finetune_run(
    ctx: Context,
    task: str,
    dataset: str,
    model_dir: Path,
    variant: str,
    ratio: float,
    repeat: int,
    label_fraction: float | None = None,
) -> dict:
    """One fine-tune (or from-scratch run) on split `repeat`; returns the test metrics without the `test_` prefix."""
    import torch  # noqa: F401  (the Trainer needs it; imported here so that --help stays fast)

    from ..finetuning import FinetuneArguments, default_training_arguments, finetune
    from ..keep_start import kept_fitted_start

    s = ctx.settings
    overrides, learning_rate = variant_recipe(variant, s.learning_rate, s.user_model_learning_rate)
    if task == "demographics":  # passed explicitly: a record must not change meaning with a library default
        overrides["classifier_layer_norm"] = s.classifier_layer_norm
        overrides["fit_head"] = s.value("fit_head")
    if task == "ctr":
        overrides["max_eval_samples"] = s.ctr_eval_samples
        if s.ctr_head:
            overrides["config_overrides"] = json.dumps(s.ctr_head)
        overrides["fit_id_biases"] = s.ctr_fit_id_biases  # explicit, as above
        overrides["id_bias_l2"] = s.ctr_id_bias_l2
    overrides["keep_fitted_start"] = s.keep_fitted_start
    args = FinetuneArguments(
        task=task,
        model_name_or_path=str(model_dir),
        dataset=dataset,
        data_dir=ctx.data_name_dir(dataset),
        label_fraction=label_fraction if label_fraction is not None else ratio,
        split_seed=repeat,
        **overrides,
    )
    out = ctx.work_dir / "finetune" / f"current-{os.getpid()}"  # one per worker process (--jobs)
    shutil.rmtree(out, ignore_errors=True)
    extra = dict(num_train_epochs=s.finetune_epochs if label_fraction is None else s.scale_finetune_epochs)
    if task == "ctr":  # MovieLens has ~80k training impressions: a step budget with step-wise evaluation
        extra = dict(
            max_steps=s.ctr_max_steps,
            eval_strategy="steps",
            save_strategy="steps",
            eval_steps=s.ctr_eval_steps,
            save_steps=s.ctr_eval_steps,
        )
    training_args = default_training_arguments(
        str(out),
        task,
        learning_rate=learning_rate,
        per_device_train_batch_size=s.finetune_batch_size,
        seed=repeat,
        data_seed=repeat,
        save_total_limit=1,
        **extra,
    )
    scale = dataset == SYNTHETIC and label_fraction is not None  # the scale setting's users
    data = ctx.data(dataset, s.scale_users) if scale else ctx.data(dataset)
    # Seeded per repeat, so that the new head's (or the from-scratch model's) initialisation never depends on what ran
    # before in this process.
    from transformers import set_seed

    set_seed(repeat)
    with quiet():
        trainer, metrics = finetune(args, training_args, data=data)
    shutil.rmtree(out, ignore_errors=True)
    scores = {
        k[len("test_") :]: float(v)
        for k, v in metrics.items()
        if k.startswith("test_") and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }
    return {**scores, "fitted_start_kept": float(kept_fitted_start(trainer))}
