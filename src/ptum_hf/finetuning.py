"""Fine-tuning PTUM user models with the Hugging Face Trainer: demographics and CTR.

ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --label_fraction 0.2
ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --freeze_user_model   # "no finetune"
ptum-hf finetune demographics --model_name_or_path outputs/pretrain/model --from_scratch   # same model, random weights
"""

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, enable_full_determinism, set_seed

from .atomic import remove_leftovers
from .configuration_ptum import PRESETS, PTUMConfig
from .data import load_behavior_data, load_tokenizer
from .data.splits import ctr_splits, demographics_splits, eval_subset
from .locking import output_lock
from .modeling_ptum import PTUMForCTR, PTUMForDemographicClassification

TASKS = ("demographics", "ctr")
logger = logging.getLogger(__name__)


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
    freeze_user_model: bool = field(default=False, metadata={"help": 'Train only the head ("no finetune").'})
    label_fraction: float = field(default=1.0, metadata={"help": "Share of the labeled training users used."})
    label_heads: str = field(default="age,gender", metadata={"help": "Demographic label columns, comma separated."})
    dataset: str = field(default="synthetic")
    data_dir: str | None = field(default=None)
    num_users: int = field(default=2000)
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic source."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the 80/10/10 user split (demographics)."})
    tokenizer_vocab_size: int = field(default=8000)
    early_stopping_patience: int = field(default=0, metadata={"help": "Evaluations without improvement (0: off)."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate during training on a seeded random subset of this many validation rows (the "
            "test split is always complete): cheaper model selection on large validation sets."
        },
    )
    classifier_layer_norm: bool = field(
        default=True,
        metadata={
            "help": "A new demographic head gets a LayerNorm on the user vector (PTUMConfig.classifier_layer_norm); "
            "a checkpoint that already has a demographic head keeps its own setting."
        },
    )
    user_model_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the user model (behavior and user encoders); the head keeps the Trainer's "
            "learning_rate. Lower than the head's, it keeps more of what pre-training learned."
        },
    )

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1]; got {self.label_fraction}")
        if self.from_scratch and not self.model_name_or_path:
            raise ValueError("from_scratch needs model_name_or_path (whose config and tokenizer it reuses)")
        if self.user_model_learning_rate is not None and not self.user_model_learning_rate > 0:
            raise ValueError(f"user_model_learning_rate must be > 0; got {self.user_model_learning_rate}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError(f"max_eval_samples must be >= 1 or None; got {self.max_eval_samples}")
        if self.user_model_learning_rate is not None and self.freeze_user_model:
            raise ValueError("user_model_learning_rate has no effect with freeze_user_model (the user model is fixed)")

    @property
    def head_names(self) -> list[str]:
        return [name.strip() for name in self.label_heads.split(",") if name.strip()]


def default_training_arguments(output_dir: str, task: str, **overrides) -> TrainingArguments:
    """Trainer defaults that suit PTUM: evaluate and save every epoch, keep the best by a validation metric."""
    metric = "macro_f1" if task == "demographics" else "auc"
    values = dict(
        output_dir=output_dir,
        num_train_epochs=5,
        learning_rate=1e-3,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=128,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        report_to="none",
        remove_unused_columns=False,
        logging_steps=20,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    values.update(overrides)
    if str(values["save_strategy"]) != str(values["eval_strategy"]) and "load_best_model_at_end" not in overrides:
        # e.g. --eval_strategy no: no evaluation at each save, so no best checkpoint to reload at the end
        values["load_best_model_at_end"] = False
    return TrainingArguments(**values)


class PTUMTrainer(Trainer):
    """The Trainer, with the user model (`model.ptum`) optionally on its own learning rate.

    The Trainer's optimizer is built as usual (its class, weight decay groups and scheduler), then each of its
    parameter groups is split in two: the user model's parameters get `user_model_learning_rate`."""

    def __init__(self, *args, user_model_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user_model_learning_rate = user_model_learning_rate

    def create_optimizer(self, model=None):
        if self.user_model_learning_rate is not None and self.optimizer is not None:
            raise ValueError(
                "user_model_learning_rate needs the Trainer to build the optimizer; an optimizer was "
                "passed in (`optimizers=`): give it the two learning rates yourself"
            )
        optimizer = super().create_optimizer(model)
        if self.user_model_learning_rate is None:
            return optimizer
        user_model = self.accelerator.unwrap_model(model or self.model).ptum
        user_ids = {id(p) for p in user_model.parameters()}
        groups = list(optimizer.param_groups)
        optimizer.param_groups.clear()  # no step has run yet: there is no optimizer state to keep in line
        for group in groups:
            for in_user_model in (False, True):  # the head's group first: the Trainer logs the first group's lr
                params = [p for p in group["params"] if (id(p) in user_ids) == in_user_model]
                if params:
                    lr = self.user_model_learning_rate if in_user_model else group["lr"]
                    optimizer.add_param_group({**group, "params": params, "lr": lr})
        on_user_lr = {
            id(p) for g in optimizer.param_groups if g["lr"] == self.user_model_learning_rate for p in g["params"]
        }
        if any(p.requires_grad and id(p) not in on_user_lr for p in user_model.parameters()):
            raise ValueError(
                f"user_model_learning_rate is not supported with optim={self.args.optim!r} or this model "
                "wrapping (the optimizer does not hold the user model's own parameters)"
            )
        return optimizer


def build_model(args: FinetuneArguments, tokenizer, label_heads: dict[str, int] | None):
    """A head model from a checkpoint, or from a preset / the checkpoint's config with fresh weights."""
    head_class = PTUMForDemographicClassification if args.task == "demographics" else PTUMForCTR
    overrides = json.loads(args.config_overrides)
    if label_heads is not None:
        overrides["label_heads"] = label_heads
    overrides["freeze_user_model"] = args.freeze_user_model
    if args.task == "demographics" and "classifier_layer_norm" not in overrides:
        if _has_head(args, head_class):
            logger.info(
                "%s already has a demographic head: its own classifier_layer_norm is kept", args.model_name_or_path
            )
        else:
            overrides["classifier_layer_norm"] = args.classifier_layer_norm
    if args.model_name_or_path and not args.from_scratch:
        return head_class.from_pretrained(args.model_name_or_path, **overrides)
    if args.model_name_or_path:
        config = PTUMConfig.from_pretrained(args.model_name_or_path, **overrides)
    else:
        config = PTUMConfig.from_preset(
            args.preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides
        )
    return head_class(config)


def _has_head(args: FinetuneArguments, head_class) -> bool:
    """Whether the checkpoint was saved with this head (its config then says how the head is built)."""
    if not args.model_name_or_path or args.from_scratch:
        return False
    architectures = PTUMConfig.from_pretrained(args.model_name_or_path).architectures or []
    return head_class.__name__ in architectures


def task_splits(data, args: FinetuneArguments):
    """(train, validation, test) of the task: users for demographics, impressions for CTR."""
    if args.task == "demographics":
        return demographics_splits(data, args.head_names, args.label_fraction, args.split_seed)
    return ctr_splits(data, args.label_fraction, args.split_seed)


def build_collator(args: FinetuneArguments, data, tokenizer, config, token_cache=None):
    from .data import CTRCollator, DemographicsCollator

    common = dict(
        max_tokens=config.max_tokens_per_behavior,
        max_behaviors=config.max_behaviors,
        token_cache=token_cache,
        id_buckets=config.behavior_id_buckets,
    )
    if args.task == "demographics":
        return DemographicsCollator.from_dataset(data, tokenizer, label_names=tuple(config.label_heads), **common)
    return CTRCollator.from_dataset(data, tokenizer, **common)


def finetune(
    args: FinetuneArguments,
    training_args: TrainingArguments,
    data=None,
    tokenizer=None,
    card_data=None,
    token_cache=None,
) -> tuple[Trainer, dict]:
    """Fine-tune (or train from scratch, or train only the head) and evaluate on the test split.

    Returns the Trainer (holding the best model by the validation metric) and the test metrics. The Trainer's
    `output_dir` is locked while it runs (`OutputInUseError` when another run holds it).
    """
    with output_dir_lock(training_args):
        return _finetune(args, training_args, data, tokenizer, card_data, token_cache)


@contextlib.contextmanager
def output_dir_lock(training_args: TrainingArguments):
    """Hold the lock of the Trainer's `output_dir` (the main process takes it) and, under it, remove what killed runs
    left there (temporary model folders)."""
    folder = training_args.output_dir
    if folder is None:
        yield
        return
    main = training_args.process_index == 0
    with output_lock(folder, main_process=main, num_processes=training_args.world_size):
        if main:
            # `.model.tmp-*`: the name a save killed in an earlier version left
            remove_leftovers(folder, untagged=("model",))
            remove_leftovers(Path(folder) / "model")
        yield


def _finetune(args, training_args, data, tokenizer, card_data, token_cache):
    from .metrics import make_ctr_compute_metrics, make_demographics_compute_metrics
    from .modelcard import ModelCardCallback

    if data is None:
        data = load_behavior_data(args.dataset, args.data_dir, args.num_users, args.synthetic_seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(args.model_name_or_path, data, args.tokenizer_vocab_size)
    label_heads = None
    if args.task == "demographics":
        missing = [name for name in args.head_names if name not in data.label_heads]
        if missing:
            raise ValueError(f"label column(s) {missing} not in the dataset; it has {list(data.label_heads)}")
        label_heads = {name: data.label_heads[name] for name in args.head_names}
    # Seed before the head (or a from-scratch model) is drawn, not only when the Trainer starts.
    (enable_full_determinism if training_args.full_determinism else set_seed)(training_args.seed)
    model = build_model(args, tokenizer, label_heads)
    train, validation, test = task_splits(data, args)
    validation = eval_subset(validation, args.max_eval_samples, args.split_seed)
    collator = build_collator(args, data, tokenizer, model.config, token_cache)
    compute_metrics = (
        make_demographics_compute_metrics(model.config.label_heads)
        if args.task == "demographics"
        else make_ctr_compute_metrics()
    )
    callbacks = [ModelCardCallback(card_data)] if card_data is not None else []
    if args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(args.early_stopping_patience))
    trainer = PTUMTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        processing_class=tokenizer,
        user_model_learning_rate=args.user_model_learning_rate,
    )
    trainer.train()
    prediction = trainer.predict(test, metric_key_prefix="test")
    if card_data is not None:
        card_data.record_eval(prediction.metrics, dataset=args.dataset)
        if args.task == "demographics":
            from .metrics import demographic_error_rates

            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            rates = demographic_error_rates(logits, prediction.label_ids, model.config.label_heads, data.label_classes)
            card_data.record_group_error_rates(rates, dataset=f"{args.dataset} (test users)")
    return trainer, prediction.metrics


def run_finetuning(args: FinetuneArguments, training_args: TrainingArguments, push_to: str | None = None) -> dict:
    """The CLI's fine-tuning: train, evaluate on test, save the best model with its tokenizer and card (and push it
    to the Hub repository `push_to`, with its modeling code)."""
    from .hub import push_to_hub, save_for_hub
    from .modelcard import PTUMModelCardData, create_model_card

    card_data = PTUMModelCardData(base_model=args.model_name_or_path if not args.from_scratch else None)
    with output_dir_lock(training_args):  # before the data is read, until the model is saved
        trainer, metrics = finetune(args, training_args, card_data=card_data)
        model = trainer.model
        card = create_model_card(card_data, model=model)
        save_for_hub(model, Path(training_args.output_dir) / "model", tokenizer=trainer.processing_class, card=card)
    if push_to:
        push_to_hub(model, push_to, tokenizer=trainer.processing_class, card=card)
    return metrics
