"""Model cards for PTUM checkpoints, filled in while training runs.

`PTUMModelCardData` collects what a card reports: the data and its statistics, hyper-parameters, pre-training and
fine-tuning metrics, per-group error rates, library versions and the command that was run. The Trainer fills it
through `ModelCardCallback`; an Accelerate loop calls its `record_*` methods. `create_model_card` renders the Jinja
template in `model_cards/` into a `huggingface_hub.ModelCard`, whose YAML header carries the `model-index`.
"""

import inspect
import math
import platform
import shlex
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import TrainerCallback

TEMPLATE_PATH = Path(__file__).parent / "templates" / "ptum_model_card_template.md"

PAPER_URL = "https://aclanthology.org/2020.findings-emnlp.174"
CITATION = """@inproceedings{wu-etal-2020-ptum,
    title = "{PTUM}: Pre-training User Model from Unlabeled User Behaviors via Self-supervision",
    author = "Wu, Chuhan and Wu, Fangzhao and Qi, Tao and Lian, Jianxun and Huang, Yongfeng and Xie, Xing",
    booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2020",
    year = "2020",
    publisher = "Association for Computational Linguistics",
    pages = "1939--1944",
    doi = "10.18653/v1/2020.findings-emnlp.174",
    url = "https://aclanthology.org/2020.findings-emnlp.174",
}"""

# The Hub has no user-modeling task. A head reads a user's event log (rows of user id, time and text: a table) and
# gives one class per user (demographics) or per user and ad (a click): `tabular-classification` is the Hub task whose
# input and output are those. `text-classification` would promise that one string in gives a label out, which it does
# not. The encoder's output, a vector per user, is what `feature-extraction` means.
USER_CLASSIFICATION_TAG = "tabular-classification"
# Model class -> (task key, the Hub task: `pipeline_tag` and model-index task type, readable task name).
CARD_TASKS = {
    "PTUMModel": ("user-model", "feature-extraction", "User representation"),
    "PTUMForPretraining": ("pretraining", "feature-extraction", "User model pre-training (MBP + NBP)"),
    "PTUMForDemographicClassification": (
        "demographics",
        USER_CLASSIFICATION_TAG,
        "Demographic prediction from user behavior",
    ),
    "PTUMForCTR": ("ctr", USER_CLASSIFICATION_TAG, "Click-through rate prediction"),
}
PRETRAINING_TASK = ("feature-extraction", "User model pre-training (MBP + NBP)")
DEFAULT_LICENSE = "apache-2.0"  # the package's own; pass `license=` for a model whose data says otherwise
# Extra tags per task key, beside the common ones.
TASK_TAGS = {"demographics": ["demographic-prediction"], "ctr": ["click-through-rate"], "pretraining": ["pretraining"]}
# Suffixes of behavior logs (`read_behavior_log`): such a name is a file, even where it does not exist here.
LOG_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".parquet", ".gz", ".bz2", ".zst", ".xz")

LIBRARIES = ("ptum-hf", "transformers", "torch", "huggingface_hub", "accelerate", "datasets", "evaluate", "tokenizers")

# Training arguments worth a line in the card; the full `TrainingArguments` has about a hundred fields.
TRAINING_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "optim",
    "seed",
    "fp16",
    "bf16",
    "eval_strategy",
    "metric_for_best_model",
    "load_best_model_at_end",
)

# Trainer metrics that describe speed, not quality: kept out of the card.
SPEED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")
SPLIT_PREFIXES = ("eval", "test", "validation", "predict")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a PTUM checkpoint depends on (those installed)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def current_command() -> str:
    """The command line of this process, quoted so it can be pasted back into a shell."""
    return shlex.join(["python", *sys.argv])


def is_hub_id(name: str | None) -> bool:
    """Whether `name` is a Hub repository id (`org/name` or `name`), not a local path: a card links only those."""
    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def dataset_reference(source: str) -> tuple[str, str | None]:
    """
    How a card names the data a model was trained on: `(name, Hub dataset id or None)`.

    A behavior log path becomes its file name (the folders say where it lay on one machine, and may name a person), a
    glob keeps its folder's name (`logs/*.csv`); an `org/name` that is no local file is a `datasets` id; anything else,
    such as a built-in source (`synthetic`, `movielens-100k`), stays as given.
    """
    text = str(source)
    path = Path(text)
    if any(char in text for char in "*?["):
        return (f"{path.parent.name}/{path.name}" if path.parent.name else path.name), None
    if path.exists() or path.is_absolute() or path.suffix.lower() in LOG_SUFFIXES or text.startswith("."):
        return path.name or text, None
    if "/" in text and is_hub_id(text):
        return text, text
    return text, None


@dataclass
class PTUMModelCardData:
    """
    What a PTUM model card reports. Filled while training runs, then rendered by `create_model_card`.

    Args:
        model_id (`str`, *optional*): the Hub repository, e.g. `"org/ptum-hsa-mind"`; used in the loading examples.
        model_name (`str`, *optional*): a readable name; also names the `model-index`. Defaults to `model_id`.
        base_model (`str`, *optional*): the checkpoint this model was fine-tuned from. Only a Hub id becomes the
            card's `base_model` link; a local folder is said to be "a local checkpoint" (its path is not written).
        language, license, tags: Hub metadata; `license` defaults to `apache-2.0`, the task adds its tags.
        model_class (`str`, *optional*): e.g. `"PTUMForDemographicClassification"`; set by `record_model`.
        datasets (`dict`): dataset name -> `{"id", "split", "role", "stats"}`; see `record_dataset`.
        hyperparameters (`dict`): the model config's PTUM fields; see `record_config`.
        training_args (`dict`): optimisation settings; see `record_training_args`.
        pretraining_log (`list[dict]`): `{"step", "mbp_loss", "mbp_accuracy", ...}` rows on held-out users.
        evaluation_log (`list[dict]`): fine-tuning evaluations, one row per `Trainer.evaluate`.
        results (`dict`): the last metrics per `"pretraining/split"` or `"fine-tuning/split"`; the `model-index`.
        group_error_rates (`dict`): `{head: {grouping head: {group: {"error_rate", "count"}}}}`.
        versions (`dict`): library versions, captured when the card data is created.
        command (`str`): the command that trained the model, captured when the card data is created.
    """

    model_id: str | None = None
    model_name: str | None = None
    base_model: str | None = None
    language: str | list[str] | None = None
    license: str | None = DEFAULT_LICENSE
    tags: list[str] = field(default_factory=lambda: ["ptum", "user-modeling", "recommendation"])
    model_class: str | None = None
    num_parameters: int | None = None
    label_heads: dict[str, int] | None = None
    datasets: dict[str, dict] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training_args: dict[str, Any] = field(default_factory=dict)
    pretraining_log: list[dict] = field(default_factory=list)
    pretraining_dataset: str | None = None
    evaluation_log: list[dict] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    group_error_rates: dict[str, dict] = field(default_factory=dict)
    group_error_rates_dataset: str | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    command: str = field(default_factory=current_command)
    # The data sources as given (a path, a built-in name) -> as the card names them (`dataset_reference`).
    dataset_sources: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ recording

    def record_model(self, model) -> None:
        """The model's class, size and config."""
        self.model_class = type(model).__name__
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.record_config(model.config)

    def record_config(self, config) -> None:
        """The config's own fields (those of its `__init__`), not transformers' generic ones."""
        values = config.to_dict()
        names = [n for n in inspect.signature(type(config).__init__).parameters if n not in ("self", "kwargs")]
        hyperparameters = {name: values[name] for name in names if name in values}
        text_config = hyperparameters.get("text_encoder_config")
        if isinstance(text_config, dict):
            # A whole nested config would drown the table; its name is what a reader needs.
            hyperparameters["text_encoder_config"] = text_config.get("_name_or_path") or text_config.get("model_type")
        self.hyperparameters = hyperparameters
        if "label_heads" in hyperparameters:
            self.label_heads = dict(hyperparameters["label_heads"])

    def record_training_args(self, args) -> None:
        """Optimisation settings from `TrainingArguments` or a plain dict (an Accelerate loop's own settings)."""
        values = args if isinstance(args, dict) else args.to_dict()
        if not isinstance(args, dict):
            values = {name: values[name] for name in TRAINING_ARGS if name in values}
            if values.get("max_steps", 0) <= 0:
                values.pop("max_steps", None)  # -1 means "use num_train_epochs"
        self.training_args.update({name: _plain(value) for name, value in values.items()})

    def record_dataset(
        self, name: str, stats: dict, dataset_id: str | None = None, split: str | None = None, role: str | None = None
    ) -> None:
        """Statistics of a dataset (users, behaviors, unique behaviors, ...); `role` is e.g. `"pre-training"`.
        `name` is the source as given: a log path is named by its file, an `org/name` is taken as a Hub dataset id."""
        name, hub_id = self._dataset_name(name)
        dataset_id = dataset_id or hub_id
        entry = self.datasets.setdefault(name, {"id": None, "split": None, "role": None, "stats": {}})
        entry["stats"].update({key: _plain(value) for key, value in stats.items()})
        for key, value in (("id", dataset_id), ("split", split), ("role", role)):
            if value is not None:
                entry[key] = value

    def record_pretraining(self, metrics: dict, step: int, dataset: str | None = None) -> None:
        """
        One pre-training evaluation on held-out users, e.g. `{"mbp_loss": .., "mbp_accuracy": .., "nbp_loss": ..,
        "nbp_accuracy": ..}`. Call it from the Accelerate loop after each evaluation; the last call is reported.
        """
        row = {"step": int(step), **{_strip_split(key)[1]: _plain(value) for key, value in metrics.items()}}
        self.pretraining_log.append(row)
        if dataset is not None:
            self.pretraining_dataset = self._mention_dataset(dataset, "pre-training")
        self.results["pretraining/held-out users"] = {
            "task": "pretraining",
            "split": "held-out users",
            "dataset": self.pretraining_dataset,
            "metrics": {key: value for key, value in row.items() if key != "step" and _is_metric_value(value)},
        }

    def record_eval(
        self, metrics: dict, step: int | None = None, epoch: float | None = None, dataset: str | None = None
    ) -> None:
        """
        A fine-tuning evaluation as the Trainer reports it (`eval_accuracy`, `test_auc`, ...). The prefix names
        the split; speed metrics are dropped. The last evaluation of each split is reported in the `model-index`.
        """
        split, values = None, {}
        for key, value in metrics.items():
            prefix, name = _strip_split(key)
            split = split or prefix
            if name not in SPEED_METRICS:
                values[name] = _plain(value)
        split = split or "eval"
        if dataset is not None:
            dataset = self._mention_dataset(dataset, "fine-tuning")
        self.evaluation_log.append({"step": step, "epoch": epoch, "split": split, **values})
        self.results[f"fine-tuning/{split}"] = {
            "task": "fine-tuning",  # which one is read from the model class when the card is rendered
            "split": split,
            "dataset": dataset,
            # The loss depends on the head's parameterisation; the task metrics are what compares across models.
            "metrics": {name: value for name, value in values.items() if name != "loss" and _is_metric_value(value)},
        }

    def record_group_error_rates(self, rates: dict, dataset: str | None = None) -> None:
        """Error rates per group, as `ptum_hf.metrics.demographic_error_rates` returns them."""
        for head, by_grouping in rates.items():
            for grouping, groups in by_grouping.items():
                self.group_error_rates.setdefault(head, {})[grouping] = {
                    str(group): {"error_rate": float(value["error_rate"]), "count": int(value["count"])}
                    for group, value in groups.items()
                }
        if dataset is not None:
            # e.g. "<source> (test users)": the source named as everywhere else in the card
            for source, name in sorted(self.dataset_sources.items(), key=lambda item: -len(item[0])):
                dataset = dataset.replace(source, name)
            self.group_error_rates_dataset = dataset

    def _mention_dataset(self, source: str, role: str) -> str:
        """The card's name of `source`, which is listed among the datasets (used for `role`, unless it has one)."""
        self.record_dataset(source, {})
        name = self.dataset_sources[str(source)]
        self.datasets[name]["role"] = self.datasets[name]["role"] or role
        return name

    def _dataset_name(self, source: str) -> tuple[str, str | None]:
        """`dataset_reference(source)`, remembered so that later mentions of `source` are named the same."""
        name, hub_id = dataset_reference(source)
        self.dataset_sources[str(source)] = name
        return name, hub_id

    @property
    def default_dataset(self) -> str | None:
        """The dataset a result without one was measured on: the last one recorded."""
        return next(reversed(self.datasets), None)

    @property
    def base_model_id(self) -> str | None:
        """`base_model` when it is a Hub id (linked in the card), else None."""
        return self.base_model if is_hub_id(self.base_model) else None

    # ------------------------------------------------------------------ rendering

    @property
    def eval_results(self) -> list[EvalResult]:
        """The recorded final metrics as `huggingface_hub.EvalResult`s, for the card's `model-index`."""
        eval_results = []
        for result in self.results.values():
            task_type, task_name = self._task_of(result["task"])
            dataset = result["dataset"] or self.default_dataset or "unknown"
            dataset_id = self.datasets.get(dataset, {}).get("id") or dataset
            for name, value in result["metrics"].items():
                if isinstance(value, float) and math.isnan(value):
                    continue  # e.g. an AUC on a one-class split: nothing to report
                eval_results.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=task_name,
                        dataset_type=dataset_id,
                        dataset_name=dataset,
                        dataset_split=result["split"],
                        metric_type=_metric_type(name),
                        metric_name=name,
                        metric_value=value,
                    )
                )
        return eval_results

    def _task_of(self, task: str) -> tuple[str, str]:
        """(model-index task type, readable name) of a recorded result."""
        if task == "pretraining":
            return PRETRAINING_TASK
        _, task_type, task_name = CARD_TASKS.get(self.model_class, (None, USER_CLASSIFICATION_TAG, "Fine-tuning"))
        return task_type, task_name

    def to_model_card_data(self) -> ModelCardData:
        """The card's YAML metadata, `model-index` included."""
        eval_results = self.eval_results
        task, pipeline_tag, _ = CARD_TASKS.get(self.model_class, ("user-model", "feature-extraction", None))
        return ModelCardData(
            # The Hub reads model_name only as the model-index's name.
            model_name=(self.model_name or self.model_id or "PTUM user model") if eval_results else None,
            base_model=self.base_model_id,
            language=self.language,
            license=self.license,
            library_name="transformers",
            pipeline_tag=pipeline_tag,
            tags=[*self.tags, *(tag for tag in TASK_TAGS.get(task, []) if tag not in self.tags)],
            datasets=[entry["id"] for entry in self.datasets.values() if entry["id"]] or None,
            metrics=sorted({result.metric_type for result in eval_results}) or None,
            eval_results=eval_results or None,
        )

    @property
    def objectives(self) -> list[str]:
        """The pre-training tasks the config switches on (the paper's MBP and NBP when no config was recorded)."""
        values = self.hyperparameters
        wanted = {"mbp": values.get("use_mbp", True), "nbp": values.get("use_nbp", True), "bag": values.get("use_bag")}
        return [name for name, on in wanted.items() if on]

    def to_dict(self) -> dict[str, Any]:
        """The template's variables."""
        task, _, task_name = CARD_TASKS.get(self.model_class, ("user-model", None, "User representation"))
        return {
            "model_id": self.model_id or "path/to/checkpoint",
            "model_name": self.model_name or self.model_id or "PTUM user model",
            "base_model": self.base_model_id,
            "base_model_local": bool(self.base_model) and not self.base_model_id,
            "license": self.license,
            "model_class": self.model_class or "PTUMModel",
            "task": task,
            "task_name": task_name,
            "num_parameters": _format(self.num_parameters) if self.num_parameters else None,
            "label_heads": self.label_heads,
            "objectives": self.objectives,
            "datasets": [
                {**entry, "name": name, "stats": {key: _format(value) for key, value in entry["stats"].items()}}
                for name, entry in self.datasets.items()
            ],
            "hyperparameters": {key: _format(value) for key, value in self.hyperparameters.items()},
            "training_args": {key: _format(value) for key, value in self.training_args.items()},
            "pretraining_dataset": self.pretraining_dataset or (self.default_dataset if self.pretraining_log else None),
            "pretraining_log": _table(self.pretraining_log),
            "evaluation_log": _table(self.evaluation_log),
            "group_error_rates": self.group_error_rates,
            "group_error_rates_table": _group_rows(self.group_error_rates),
            "group_error_rates_dataset": self.group_error_rates_dataset,
            "versions": self.versions,
            "command": self.command,
            "citation": CITATION,
            "paper_url": PAPER_URL,
        }


class ModelCardCallback(TrainerCallback):
    """
    Fills a `PTUMModelCardData` during `Trainer.train`: the model and training arguments when training begins, the
    metrics after each evaluation.

    Example:

    ```python
    >>> card_data = PTUMModelCardData(model_id="org/ptum-demographics", language="en")
    >>> trainer = Trainer(..., callbacks=[ModelCardCallback(card_data, dataset="my-users")])
    >>> trainer.train()
    >>> create_model_card(card_data).save("outputs/README.md")
    ```
    """

    def __init__(self, card_data: PTUMModelCardData | None = None, dataset: str | None = None):
        self.card_data = card_data if card_data is not None else PTUMModelCardData()
        self.dataset = dataset

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.card_data.record_training_args(args)
        if model is not None:
            self.card_data.record_model(model)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if model is not None and self.card_data.model_class is None:
            self.card_data.record_model(model)  # `Trainer.evaluate` without training
        if metrics:
            self.card_data.record_eval(metrics, step=state.global_step, epoch=state.epoch, dataset=self.dataset)


def create_model_card(card_data: PTUMModelCardData | None = None, model=None, **template_vars) -> ModelCard:
    """
    Render a PTUM model card. `model` (optional) fills in what the card data lacks: class, size and config.
    `template_vars` override the card data's template variables.
    """
    card_data = card_data if card_data is not None else PTUMModelCardData()
    if model is not None and card_data.model_class is None:
        card_data.record_model(model)
    variables = {**card_data.to_dict(), **template_vars}
    return ModelCard.from_template(
        card_data=card_data.to_model_card_data(), template_path=str(TEMPLATE_PATH), **variables
    )


# ---------------------------------------------------------------------- helpers


def _strip_split(key: str) -> tuple[str | None, str]:
    prefix, _, name = key.partition("_")
    return (prefix, name) if prefix in SPLIT_PREFIXES and name else (None, key)


def _metric_type(name: str) -> str:
    """A Hub metric id for a recorded metric name (`age_macro_f1` -> `f1`)."""
    for suffix, metric_type in (
        ("accuracy", "accuracy"),
        ("f1", "f1"),
        ("auc", "roc_auc"),
        ("ap", "average_precision"),
        ("logloss", "log_loss"),
        ("loss", "loss"),
    ):
        if name == suffix or name.endswith("_" + suffix):
            return metric_type
    return name


def _plain(value):
    """Plain Python numbers from numpy / torch scalars, so the card data stays JSON- and YAML-friendly."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _is_metric_value(value) -> bool:
    """A metric worth listing: a plain number (after `_plain`), not a flag."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict]) -> dict | None:
    """Rows of dicts -> `{"columns": [...], "rows": [[formatted cells]]}` for a markdown table."""
    if not rows:
        return None
    columns = []
    for row in rows:
        columns += [key for key, value in row.items() if key not in columns and value is not None]
    return {"columns": columns, "rows": [[_format(row.get(c)) if c in row else "" for c in columns] for row in rows]}


def _group_rows(rates: dict) -> list[dict]:
    return [
        {
            "head": head,
            "grouping": grouping,
            "group": group,
            "error_rate": _format(value["error_rate"]),
            "count": _format(value["count"]),
        }
        for head, by_grouping in rates.items()
        for grouping, groups in by_grouping.items()
        for group, value in groups.items()
    ]


__all__ = ["ModelCardCallback", "PTUMModelCardData", "TEMPLATE_PATH", "create_model_card", "library_versions"]
