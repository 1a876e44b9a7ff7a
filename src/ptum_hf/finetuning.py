"""Fine-tuning PTUM user models with the Hugging Face Trainer: demographics and CTR.

    ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --label_fraction 0.2
    ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --freeze_user_model   # "no finetune"
    ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --from_scratch        # same architecture, random weights
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from .configuration_ptum import PRESETS, PTUMConfig
from .modeling_ptum import PTUMForCTR, PTUMForDemographicClassification
from .training_utils import split_users_three_way

TASKS = ("demographics", "ctr")


@dataclass
class FinetuneArguments:
    """What to fine-tune on which data (the Trainer's own arguments come as `TrainingArguments`)."""

    task: str = field(default="demographics", metadata={"help": "demographics or ctr."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pre-trained PTUM checkpoint (folder or Hub id) with its tokenizer."}
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "Use the checkpoint's config and tokenizer but random weights (a baseline)."}
    )
    preset: str = field(default="hsa", metadata={"help": "Preset when no checkpoint is given (trains a tokenizer)."})
    config_overrides: str = field(default="{}", metadata={"help": "JSON of PTUMConfig fields."})
    freeze_user_model: bool = field(default=False, metadata={"help": "Train only the head (\"no finetune\")."})
    label_fraction: float = field(default=1.0, metadata={"help": "Share of the labeled training users used."})
    label_heads: str = field(default="age,gender", metadata={"help": "Demographic label columns, comma separated."})
    dataset: str = field(default="synthetic")
    data_dir: str | None = field(default=None)
    num_users: int = field(default=2000)
    data_seed: int = field(default=0)
    split_seed: int = field(default=0, metadata={"help": "Seed of the 80/10/10 user split (demographics)."})
    tokenizer_vocab_size: int = field(default=8000)
    early_stopping_patience: int = field(default=0, metadata={"help": "Evaluations without improvement (0: off)."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1]; got {self.label_fraction}")
        if self.from_scratch and not self.model_name_or_path:
            raise ValueError("from_scratch needs model_name_or_path (whose config and tokenizer it reuses)")

    @property
    def head_names(self) -> list[str]:
        return [name.strip() for name in self.label_heads.split(",") if name.strip()]


def default_training_arguments(output_dir: str, task: str, **overrides) -> TrainingArguments:
    """Trainer defaults that suit PTUM: evaluate and save every epoch, keep the best by a validation metric."""
    metric = "macro_f1" if task == "demographics" else "auc"
    values = dict(
        output_dir=output_dir, num_train_epochs=5, learning_rate=1e-3, per_device_train_batch_size=64,
        per_device_eval_batch_size=128, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=True, report_to="none",
        remove_unused_columns=False, logging_steps=20, seed=0, data_seed=0, save_safetensors=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def label_subset(train, fraction: float, seed: int):
    """The first `fraction` of a seeded shuffle of the training users (nested: 20% is inside 50%)."""
    if fraction >= 1.0:
        return train
    order = np.random.default_rng(seed + 1).permutation(len(train))
    keep = max(1, int(round(fraction * len(train))))
    return train.select(np.sort(order[:keep]))


def build_model(args: FinetuneArguments, tokenizer, label_heads: dict[str, int] | None):
    """A head model from a checkpoint, or from a preset / the checkpoint's config with fresh weights."""
    head_class = PTUMForDemographicClassification if args.task == "demographics" else PTUMForCTR
    overrides = json.loads(args.config_overrides)
    if label_heads is not None:
        overrides["label_heads"] = label_heads
    overrides["freeze_user_model"] = args.freeze_user_model
    if args.model_name_or_path and not args.from_scratch:
        return head_class.from_pretrained(args.model_name_or_path, **overrides)
    if args.model_name_or_path:
        config = PTUMConfig.from_pretrained(args.model_name_or_path, **overrides)
    else:
        config = PTUMConfig.from_preset(
            args.preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides
        )
    return head_class(config)
