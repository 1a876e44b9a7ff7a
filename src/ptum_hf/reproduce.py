"""Reproduce the PTUM paper's experiments (Wu et al., 2020) with this library's public API.

    ptum-hf reproduce --output_dir results                       # everything (about 1 h 50 min on 2 cores)
    ptum-hf reproduce --quick --output_dir /tmp/r                # tiny version (a test runs it)
    ptum-hf reproduce --experiments table2 --presets hsa --ratios 0.2,1.0 --repeats 3

Experiments (`--experiments`, comma separated):

- `table2`: demographics (age, 4 buckets; gender) on MovieLens-100K; presets HAN/HURA/HSA x {from scratch, PTUM no
  finetune, PTUM finetune} x label ratios; repeat r uses its own 80/10/10 user split (`split_seed=r`).
- `table3`: CTR on MovieLens-100K (rating >= 4, time split) and on the synthetic task; GRU4Rec/NativeCTR/BERT4Rec.
- `ablation`: pre-training tasks none / MBP only / NBP only / both, for HSA (demographics) and BERT4Rec (CTR).
- `lambda`, `k`: the NBP weight lambda and the number K of next behaviors (HSA, demographics). The ablation and
  these sweeps run in the synthetic `scale` setting (its first labeled count; the CTR ablation on the synthetic CTR
  task), where pre-training has something to give, or with `--sweep_data movielens` on MovieLens.
- `baselines`: majority class and logistic regression on TF-IDF bag-of-items (demographics); item mean click rate
  and logistic regression on user and item one-hots (CTR); on exactly the splits the user models get.
- `scale`: synthetic, every user pre-trains (51,250) and 200 or 1,000 of the training users carry labels (250:1, 50:1).

Pre-training uses every user's behaviors and no labels, once per (dataset, preset, pre-training setting); the
fine-tunes reuse it. The experiments plan jobs (pre-trainings, fine-tunes, baselines, probes) and `run_jobs` runs
them, with `--jobs N` in N worker processes. Every job's test metrics are appended to
`<output_dir>/raw/<experiment>.jsonl` as soon as they exist, so an interrupted run continues where it stopped; the
Markdown tables (`<output_dir>/*.md`) and PNG plots are rebuilt from those records as each experiment finishes.
Differences between two variants are paired: the same split, the same labeled users, then mean +- std of the
per-split difference and how often it is positive.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

EXPERIMENTS = ("baselines", "table2", "table3", "ablation", "lambda", "k", "scale", "probe")
DEMOGRAPHIC_PRESETS = ("han", "hura", "hsa")
CTR_PRESETS = ("gru4rec", "nativectr", "bert4rec")
MOVIELENS = "movielens-100k"
SYNTHETIC = "synthetic"

# name: (FinetuneArguments overrides, learning rate). A new head needs large steps; the pre-trained user model small
# ones (session 3 of results/README.md: head 1e-2 with the user model at 1e-3 beat one rate of 5e-4 everywhere).
VARIANTS = {
    "scratch": ({"from_scratch": True}, 1e-3),
    "ptum_frozen": ({"freeze_user_model": True}, 1e-2),
    "ptum_finetune": ({}, 1e-2),  # the head's; the user model gets Settings.user_model_learning_rate
}
VARIANT_NAMES = {"scratch": "from scratch", "ptum_frozen": "PTUM no finetune", "ptum_finetune": "PTUM finetune",
                 "majority": "majority class", "lr_tfidf": "LR, TF-IDF bag-of-items",
                 "lr_tfidf_words": "LR, TF-IDF words of the texts",
                 "lr_tfidf_same": "LR, TF-IDF bag of the same recent items",
                 "item_mean": "item mean click rate", "cosine_tfidf": "history-ad TF-IDF cosine (untrained)", "lr_user_item": "LR, user + item one-hot",
                 "probe_ptum": "LR on frozen PTUM user vectors", "probe_random": "LR on random-init user vectors"}
BASELINE_VARIANTS = ("majority", "lr_tfidf", "lr_tfidf_words", "item_mean", "lr_user_item", "cosine_tfidf")
DEMOGRAPHIC_METRICS = ("age_accuracy", "age_macro_f1", "gender_accuracy", "gender_macro_f1", "gender_auc")
CTR_METRICS = ("auc", "ap")

# Model sizes (PTUMConfig overrides). The paper's sizes (300-d words, 256-d vectors, 100 behaviors) cost about 4 s
# per pre-training step of 32 users on one CPU core; "small" is about 5 times cheaper.
SIZES = {
    "paper": {},
    "small": {"word_embedding_dim": 64, "hidden_size": 64, "num_attention_heads": 4, "additive_attention_dim": 32,
              "intermediate_size": 128, "max_behaviors": 50, "max_tokens_per_behavior": 16},
    "tiny": {"word_embedding_dim": 16, "hidden_size": 16, "num_attention_heads": 2, "additive_attention_dim": 8,
             "intermediate_size": 32, "max_behaviors": 20, "max_tokens_per_behavior": 12},
}


DEFAULT_USER_LR = 1e-3


@dataclass
class Settings:
    """Everything that decides the numbers; written next to the tables."""

    data_dir: str | None = None
    size: str = "small"
    repeats: int = 5
    ratios: tuple = (0.2, 0.5, 1.0)
    demographic_presets: tuple = DEMOGRAPHIC_PRESETS
    ctr_presets: tuple = CTR_PRESETS
    ctr_datasets: tuple = (MOVIELENS, SYNTHETIC)
    synthetic_users: int = 3000
    pretrain_epochs: int = 10
    pretrain_max_steps: int = -1
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 1e-3
    finetune_epochs: int = 40  # MovieLens: 20 epochs under-trains (PTUM finetune gender AUC -0.066 at 100%)
    finetune_batch_size: int = 64
    # The scale setting: 200-1,000 labeled users, each epoch evaluated on 5,125 validation users (session 3's recipe)
    scale_finetune_epochs: int = 5
    ctr_max_steps: int = 150
    ctr_eval_steps: int = 75
    ctr_eval_samples: int | None = 2000  # validation rows for CTR model selection (the test split stays whole)
    ctr_repeats: int = 2  # CTR's time split is the same for every repeat: only the labeled subset and seed vary
    sweep_repeats: int = 3  # lambda and K
    ablation_ratio: float = 0.2
    ablation_tasks: tuple = ("demographics", "ctr")
    lambdas: tuple = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    ks: tuple = (1, 2, 3, 4, 5)
    scale_users: int = 51250
    scale_labeled: tuple = (200, 1000)  # 250:1 and the 50:1; the sweeps use the first
    scale_pretrain_steps: int = 1500
    tokenizer_vocab_size: int = 8000
    behavior_tokens: str = "text"
    max_behaviors: int | None = None  # None: the size's own
    classifier_layer_norm: bool = True
    ctr_ad_prior: bool = False  # PTUMConfig.ad_prior for the CTR models
    variants: tuple = tuple(VARIANTS)  # of table2, table3, scale, probe... (the others run what they need)
    user_model_learning_rate: float | None = DEFAULT_USER_LR  # PTUM finetune only; None: the head's rate for all
    learning_rate: float | None = None  # PTUM finetune: the Trainer's (head's) learning rate; None: VARIANTS'
    sweep_data: str = "scale"  # where ablation, lambda and K run: movielens or the synthetic scale setting
    tag: str = ""
    seed: int = 0

    @property
    def model_overrides(self) -> dict:
        overrides = dict(SIZES[self.size])
        if self.behavior_tokens == "item":  # one token per behavior: an item-id embedding model
            overrides["max_tokens_per_behavior"] = 1
        if self.max_behaviors is not None:
            overrides["max_behaviors"] = self.max_behaviors
        return overrides

    @property
    def history_length(self) -> int:
        """How many of a user's most recent behaviors the user models see (the paper: 100)."""
        from .configuration_ptum import PTUMConfig

        return self.model_overrides.get("max_behaviors", PTUMConfig().max_behaviors)

    def model_label(self, preset: str) -> str:
        """The name a user model gets in the tables: the preset, then each departure from the default recipe."""
        user_lr = self.user_model_learning_rate
        marks = [
            (self.size != "small", f"[{self.size}]"),
            (self.behavior_tokens == "item", "(item ids)"),
            (self.max_behaviors is not None, f"[{self.max_behaviors} behaviors]"),
            (not self.classifier_layer_norm and preset in DEMOGRAPHIC_PRESETS, "(no LN head)"),
            (self.ctr_ad_prior and preset in CTR_PRESETS, "(ad prior)"),
            (bool(self.learning_rate), f"[lr {self.learning_rate:g}]" if self.learning_rate else ""),
            (user_lr is None, "[one lr]"),
            (user_lr not in (None, DEFAULT_USER_LR), f"[user lr {user_lr:g}]" if user_lr else ""),
            (bool(self.tag), f"{{{self.tag}}}"),
        ]
        return " ".join([preset] + [mark for wanted, mark in marks if wanted])

QUICK = dict(
    size="tiny", repeats=1, ratios=(0.5,), demographic_presets=("hsa",), ctr_presets=("nativectr",),
    ctr_datasets=(SYNTHETIC,), synthetic_users=160, pretrain_epochs=1, pretrain_max_steps=4, pretrain_batch_size=16,
    finetune_epochs=1, scale_finetune_epochs=1, finetune_batch_size=32, ctr_max_steps=4, ctr_eval_steps=2, ablation_ratio=0.5,
    lambdas=(0.0, 1.0), ks=(1, 2), scale_users=200, scale_labeled=(4,), scale_pretrain_steps=4, tokenizer_vocab_size=400,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ptum-hf reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="results", help="Tables, plots, raw records.")
    parser.add_argument("--work_dir", default=None,
                        help="Pre-trained models and Trainer folders (default: outputs/reproduce, or a folder under "
                             "output_dir for --quick).")
    parser.add_argument("--quick", action="store_true", help="Tiny settings on a small synthetic dataset.")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"Subset of {','.join(EXPERIMENTS)}.")
    parser.add_argument("--repeats", type=int, default=None, help="Splits per cell (seed r = 0..repeats-1).")
    parser.add_argument("--presets", default=None,
                        help="Restrict the presets (of table2 and table3), e.g. hsa or hsa,bert4rec.")
    parser.add_argument("--ratios", default=None, help="Label ratios, e.g. 0.2,0.5,1.0.")
    parser.add_argument("--ctr_datasets", default=None, help=f"{MOVIELENS},{SYNTHETIC} or one of them.")
    parser.add_argument("--size", choices=tuple(SIZES), default=None, help="Model size (PTUMConfig overrides).")
    parser.add_argument("--behavior_tokens", choices=("text", "item"), default=None,
                        help="text: WordPiece tokens of the behavior text (default); item: one token per distinct "
                             "behavior (item identity, no text).")
    parser.add_argument("--max_behaviors", type=int, default=None,
                        help="Most recent behaviors per user the user models see (default: the size's; small: 50).")
    parser.add_argument("--variants", default=None,
                        help=f"Restrict the user-model variants, e.g. ptum_finetune (of {','.join(VARIANTS)}).")
    parser.add_argument("--classifier_layer_norm", action=argparse.BooleanOptionalAction, default=None,
                        help="LayerNorm on the user vector before the demographic classifier (PTUMConfig).")
    parser.add_argument("--ctr_ad_prior", action=argparse.BooleanOptionalAction, default=None,
                        help="CTR models add a learned score of the ad alone to the click logit (PTUMConfig.ad_prior).")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="PTUM finetune: the Trainer's (the head's) learning rate (default: 1e-2, VARIANTS).")
    parser.add_argument("--sweep_data", choices=("movielens", "scale"), default=None,
                        help="Where the ablation, lambda and K run: the synthetic `scale` setting (default: scale_users "
                             "pre-train, the first scale_labeled labeled; the CTR ablation on the synthetic CTR task) "
                             "or MovieLens.")
    parser.add_argument("--user_model_learning_rate", type=float, default=None,
                        help="PTUM finetune: the user model's own learning rate (default 1e-3; the head keeps the "
                             "variant's); 0: the head's rate for the whole model.")
    parser.add_argument("--pretrain_epochs", type=int, default=None)
    parser.add_argument("--pretrain_max_steps", type=int, default=None)
    parser.add_argument("--finetune_epochs", type=int, default=None)
    parser.add_argument("--scale_finetune_epochs", type=int, default=None,
                        help="Fine-tuning epochs in the synthetic scale setting (and the sweeps run there).")
    parser.add_argument("--ctr_max_steps", type=int, default=None)
    parser.add_argument("--synthetic_users", type=int, default=None)
    parser.add_argument("--scale_users", type=int, default=None)
    parser.add_argument("--scale_labeled", default=None, help="Labeled training users of the scale setting, e.g. "
                        "200,1000 (the sweeps use the first).")
    parser.add_argument("--ctr_repeats", type=int, default=None, help="Repeats of the CTR fine-tunes (at most --repeats).")
    parser.add_argument("--sweep_repeats", type=int, default=None, help="Repeats of lambda and K (at most --repeats).")
    parser.add_argument("--ctr_eval_samples", type=int, default=None,
                        help="Validation impressions for CTR model selection; 0: all.")
    parser.add_argument("--ablation_tasks", default=None, help="demographics,ctr (HSA and BERT4Rec) or one of them.")
    parser.add_argument("--ablation_ratio", type=float, default=None, help="Label ratio of ablation, lambda, K.")
    parser.add_argument("--tag", default=None, help="Appended to the model name in the tables, e.g. 'long PT', to keep a "
                                                    "variant of the settings apart from the default runs.")
    parser.add_argument("--data_dir", default=None, help="MovieLens-100K folder (default: the loader's search).")
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads.")
    parser.add_argument("--jobs", type=int, default=None,
                        help="Fine-tunes run side by side in this many worker processes, sharing the threads "
                             "(pre-training and baselines stay in the main process). Small models use two 1-thread "
                             "processes better than one 2-thread process. Default: 2 where there are 2 cores, 1 with "
                             "--quick.")
    return parser.parse_args(argv)


def build_settings(args) -> Settings:
    settings = Settings(**QUICK) if args.quick else Settings()
    changes = {}
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if args.ratios:
        changes["ratios"] = tuple(float(r) for r in args.ratios.split(","))
    if args.presets:
        chosen = [p.strip() for p in args.presets.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in DEMOGRAPHIC_PRESETS + CTR_PRESETS]
        if unknown:
            raise SystemExit(f"unknown preset(s) {unknown}; allowed: {', '.join(DEMOGRAPHIC_PRESETS + CTR_PRESETS)}")
        changes["demographic_presets"] = tuple(p for p in chosen if p in DEMOGRAPHIC_PRESETS)
        changes["ctr_presets"] = tuple(p for p in chosen if p in CTR_PRESETS)
    if args.variants:
        chosen = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if not chosen or any(v not in VARIANTS for v in chosen):
            raise SystemExit(f"variants must be among {', '.join(VARIANTS)}; got {args.variants!r}")
        changes["variants"] = chosen
    if args.ablation_tasks:
        changes["ablation_tasks"] = tuple(t.strip() for t in args.ablation_tasks.split(",") if t.strip())
    if args.scale_labeled:
        try:
            changes["scale_labeled"] = tuple(int(n) for n in args.scale_labeled.split(",") if n.strip())
        except ValueError:
            raise SystemExit(f"scale_labeled must be comma-separated counts, e.g. 200,1000; got {args.scale_labeled!r}")
    if args.ctr_datasets:
        changes["ctr_datasets"] = tuple(d.strip() for d in args.ctr_datasets.split(",") if d.strip())
    for name in ("size", "pretrain_epochs", "pretrain_max_steps", "finetune_epochs", "scale_finetune_epochs",
                 "ctr_max_steps", "synthetic_users", "scale_users", "ctr_repeats", "sweep_repeats", "ctr_eval_samples",
                 "data_dir", "behavior_tokens", "ablation_ratio", "tag",
                 "max_behaviors", "classifier_layer_norm", "ctr_ad_prior", "user_model_learning_rate", "learning_rate",
                 "sweep_data"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    for name in ("user_model_learning_rate", "ctr_eval_samples"):  # 0: none (one learning rate; all rows)
        if changes.get(name) == 0:
            changes[name] = None
    settings = replace(settings, **changes)
    if any(not 0.0 < r <= 1.0 for r in settings.ratios):
        raise SystemExit(f"ratios must be in (0, 1]; got {settings.ratios}")
    if min(settings.repeats, settings.ctr_repeats, settings.sweep_repeats) < 1:
        raise SystemExit("repeats, ctr_repeats and sweep_repeats must be >= 1")
    if not settings.scale_labeled or min(settings.scale_labeled) < 1:
        raise SystemExit(f"scale_labeled must be positive counts; got {settings.scale_labeled}")
    if args.jobs is None:
        args.jobs = 1 if args.quick else min(2, os.cpu_count() or 1)
    if args.jobs < 1:
        raise SystemExit(f"jobs must be >= 1; got {args.jobs}")
    if settings.max_behaviors is not None and settings.max_behaviors < 2:
        raise SystemExit(f"max_behaviors must be >= 2 (NBP needs a past and a next behavior); got {settings.max_behaviors}")
    return settings


# ----------------------------------------------------------------------------------------------------------- records


class Records:
    """Append-only JSON lines per experiment; a record's key says which run it is, so finished runs are skipped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, experiment):
        return self.folder / f"{experiment}.jsonl"

    def load(self, experiment) -> list[dict]:
        path = self.path(experiment)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return rows

    def done(self, experiment) -> set:
        return {record_key(r) for r in self.load(experiment)}

    def add(self, experiment, record: dict):
        with open(self.path(experiment), "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


KEY_FIELDS = ("experiment", "task", "dataset", "preset", "setting", "variant", "ratio", "repeat")


def record_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY_FIELDS)


# -------------------------------------------------------------------------------------------------------------- data


@dataclass(eq=False)
class Job:
    """One unit of work: `function(ctx, *args)` (in a worker process with `--jobs`; module-level, so it pickles),
    then `done(result, seconds)` in the main process. It starts only once `after` has finished."""

    experiment: str
    function: Callable
    args: tuple
    done: Callable
    after: Job | None = None
    finished: bool = False


class Context:
    def __init__(self, settings: Settings, output_dir: Path, work_dir: Path, quick: bool):
        self.settings = settings
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.quick = quick
        self.records = Records(output_dir / "raw")
        self._data = {}
        self.timings = {}
        self.pool = None  # worker processes for the jobs (--jobs > 1)
        self.workers = 1
        self.jobs: list[Job] = []  # planned by the experiments, run by `run_jobs`
        self.pretrainings: dict[Path, Job] = {}  # planned pre-trainings by folder, shared between grids

    def plan(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def data(self, name: str, num_users: int | None = None):
        """A dataset by name, loaded once."""
        from .training_utils import load_behavior_data

        users = num_users or self.settings.synthetic_users
        key = (name, users if name == SYNTHETIC else None)
        if key not in self._data:
            self._data[key] = load_behavior_data(name, self.data_name_dir(name), users, self.settings.seed)
        return self._data[key]

    def data_name(self, name: str) -> str:
        """MovieLens is read from disk; --quick uses synthetic data in its place (no files needed)."""
        return SYNTHETIC if self.quick and name == MOVIELENS else name

    def data_name_dir(self, name):
        return self.settings.data_dir if name == MOVIELENS else None


def log(message: str):
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------------ pre-training


def pretraining_job(ctx: Context, experiment: str, dataset: str, preset: str, setting: dict,
                    num_users: int | None = None, max_steps: int | None = None) -> tuple[Path, Job | None]:
    """Where the pre-training of (dataset, preset, setting, size) is saved, and the job that writes it there (None
    when it already exists). Planned once: grids that need the same pre-training share its job."""
    s = ctx.settings
    overrides = {**s.model_overrides, **setting}
    users = num_users or s.synthetic_users
    steps = max_steps if max_steps is not None else s.pretrain_max_steps
    from . import PRESETS

    # The preset's definition is part of the identity: a changed preset must not reuse an old pre-training.
    identity = {"dataset": dataset, "users": users if dataset == SYNTHETIC else None, "preset": preset,
                "preset_config": PRESETS[preset],
                "overrides": overrides, "epochs": s.pretrain_epochs, "steps": steps, "batch": s.pretrain_batch_size,
                "lr": s.pretrain_learning_rate, "vocab": s.tokenizer_vocab_size, "seed": s.seed}
    if s.behavior_tokens != "text":
        identity["tokens"] = s.behavior_tokens
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


def pretrain_run(ctx: Context, folder: Path, identity: dict) -> dict:
    """The pre-training `identity` describes, saved under `folder`; returns its metrics."""
    from .pretraining import PretrainingArguments, pretrain

    s = ctx.settings
    dataset, users = identity["dataset"], identity["users"] or s.synthetic_users
    start = time.perf_counter()
    args = PretrainingArguments(
        output_dir=str(folder), dataset=dataset, data_dir=ctx.data_name_dir(dataset), num_users=users,
        synthetic_seed=s.seed, preset=identity["preset"], config_overrides=json.dumps(identity["overrides"]),
        tokenizer_vocab_size=s.tokenizer_vocab_size, tokenizer_name=item_tokenizer(ctx, dataset, users),
        per_device_batch_size=s.pretrain_batch_size,
        learning_rate=s.pretrain_learning_rate, num_epochs=s.pretrain_epochs, max_steps=identity["steps"],
        eval_steps=10**9, save_steps=0, logging_steps=10**9, report_to="none", seed=s.seed,
    )
    with quiet():
        pretrain(args)
    metrics = json.loads((folder / "model" / "pretraining_metrics.json").read_text())
    atomic_json(folder / "identity.json", {**identity, "metrics": metrics,
                                           "seconds": round(time.perf_counter() - start, 1)})
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
            tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]")), pad_token="[PAD]",
            unk_token="[UNK]", mask_token="[MASK]")
        from .training_utils import atomic_directory

        with atomic_directory(folder) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return str(folder)


def pretraining_summary(ctx: Context) -> list[dict]:
    rows = []
    folder = ctx.work_dir / "pretrain"
    for path in sorted(folder.glob("*/identity.json")) if folder.exists() else []:
        rows.append(json.loads(path.read_text()))
    return rows


# ------------------------------------------------------------------------------------------------------- fine-tuning


def finetune_run(ctx: Context, task: str, dataset: str, model_dir: Path, variant: str, ratio: float, repeat: int,
                 label_fraction: float | None = None) -> dict:
    """One fine-tune (or from-scratch run) on split `repeat`; returns the test metrics without the `test_` prefix."""
    import torch  # noqa: F401  (the Trainer needs it; imported here so that --help stays fast)

    from .finetuning import FinetuneArguments, default_training_arguments, finetune

    s = ctx.settings
    overrides, learning_rate = VARIANTS[variant]
    if s.learning_rate and variant == "ptum_finetune":
        learning_rate = s.learning_rate
    overrides = dict(overrides)
    if s.user_model_learning_rate and variant == "ptum_finetune":
        overrides["user_model_learning_rate"] = s.user_model_learning_rate
    if task == "demographics":  # explicit, so that the records keep meaning what they meant (library default: on)
        overrides["classifier_layer_norm"] = s.classifier_layer_norm
    if task == "ctr":
        overrides["max_eval_samples"] = s.ctr_eval_samples
        if s.ctr_ad_prior:
            overrides["config_overrides"] = json.dumps({"ad_prior": True})
    args = FinetuneArguments(
        task=task, model_name_or_path=str(model_dir), dataset=dataset, data_dir=ctx.data_name_dir(dataset),
        label_fraction=label_fraction if label_fraction is not None else ratio, split_seed=repeat, **overrides,
    )
    out = ctx.work_dir / "finetune" / f"current-{os.getpid()}"  # one per worker process (--jobs)
    shutil.rmtree(out, ignore_errors=True)
    extra = dict(num_train_epochs=s.finetune_epochs if label_fraction is None else s.scale_finetune_epochs)
    if task == "ctr":  # MovieLens has ~80k training impressions: a step budget with step-wise evaluation
        extra = dict(max_steps=s.ctr_max_steps, eval_strategy="steps", save_strategy="steps",
                     eval_steps=s.ctr_eval_steps, save_steps=s.ctr_eval_steps)
    training_args = default_training_arguments(
        str(out), task, learning_rate=learning_rate, per_device_train_batch_size=s.finetune_batch_size,
        seed=repeat, data_seed=repeat, save_total_limit=1, **extra,
    )
    data = ctx.data(dataset) if dataset != SYNTHETIC or label_fraction is None else ctx.data(dataset, ctx.settings.scale_users)
    # `finetune` builds the model (fresh head, or every weight from scratch) before the Trainer seeds anything, so the
    # initialisation would depend on whatever ran before in this process: seed it per repeat.
    from transformers import set_seed

    set_seed(repeat)
    with quiet():
        _, metrics = finetune(args, training_args, data=data)
    shutil.rmtree(out, ignore_errors=True)
    return {k[len("test_"):]: float(v) for k, v in metrics.items() if k.startswith("test_") and _is_number(v)}


_WORKER = {}


def _worker_start(settings: Settings, output_dir: str, work_dir: str, quick: bool, threads: int):
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    _WORKER["ctx"] = Context(settings, Path(output_dir), Path(work_dir), quick)


def _worker_call(function, args) -> tuple:
    return _timed(function, _WORKER["ctx"], *args)


def _timed(function, *args) -> tuple:
    start = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - start, 1)


def run_jobs(ctx: Context, on_experiment_done=None):
    """Run every planned job, each once the job it waits on has finished: here in plan order, or in the `--jobs`
    worker processes, the first ready job in plan order whenever a worker is free (so pre-trainings run beside
    fine-tunes instead of before them). Only this process writes records (each job's `done`)."""
    jobs, ctx.jobs = ctx.jobs, []
    left = Counter(job.experiment for job in jobs)

    def finish(job, result, seconds):
        key = f"experiment {job.experiment} job seconds"  # the work, which overlaps other experiments' with --jobs
        ctx.timings[key] = round(ctx.timings.get(key, 0) + seconds, 1)
        job.done(result, seconds)
        job.finished = True
        left[job.experiment] -= 1
        if not left[job.experiment] and on_experiment_done:
            on_experiment_done(job.experiment)

    if ctx.pool is None:
        for job in jobs:
            finish(job, *_timed(job.function, ctx, *job.args))
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    running = {}  # at most one job per worker is submitted: on an error, `worker_pool` has nothing queued to cancel
    while jobs or running:
        while len(running) < ctx.workers:
            job = next((j for j in jobs if j.after is None or j.after.finished), None)
            if job is None:
                break
            jobs.remove(job)
            running[ctx.pool.submit(_worker_call, job.function, job.args)] = job
        if not running:
            raise RuntimeError(f"{len(jobs)} planned jobs wait on jobs that were never planned")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            finish(running.pop(future), *future.result())


def run_grid(ctx: Context, experiment: str, task: str, dataset: str, preset: str, setting_name: str, setting: dict,
             variants, ratios, num_users=None, max_steps=None, label_fraction_of=None, repeats=None):
    """Plan the pre-training (once; the from-scratch runs use its tokenizer and config too) and every (variant,
    ratio, repeat) fine-tune not yet recorded."""
    s = ctx.settings
    repeats = s.repeats if repeats is None else min(s.repeats, repeats)
    dataset = ctx.data_name(dataset)
    label = s.model_label(preset)
    done = ctx.records.done(experiment)
    todo = [(v, r, k) for r in ratios for k in range(repeats) for v in variants
            if (experiment, task, dataset, label, setting_name, v, r, k) not in done]
    todo = [(v, r, k) for v, r, k in todo if v in s.variants]
    if not todo:
        return
    model_dir, pretraining = pretraining_job(ctx, experiment, dataset, preset, setting, num_users, max_steps)
    for variant, ratio, repeat in todo:
        def record(metrics, seconds, variant=variant, ratio=ratio, repeat=repeat):
            ctx.records.add(experiment, {
                "experiment": experiment, "task": task, "dataset": dataset, "preset": label, "setting": setting_name,
                "variant": variant, "ratio": ratio, "repeat": repeat, "metrics": metrics, "seconds": seconds,
                "size": s.size,
            })
            main_metric = metrics.get("accuracy", metrics.get("auc"))
            log(f"{experiment} {dataset} {label} {setting_name} {variant} ratio={ratio} repeat={repeat}: "
                f"{'accuracy' if task == 'demographics' else 'auc'}={main_metric:.4f} ({seconds:.0f}s)")

        fraction = label_fraction_of(ratio) if label_fraction_of else None
        ctx.plan(Job(experiment, finetune_run, (task, dataset, model_dir, variant, ratio, repeat, fraction), record,
                     after=pretraining))


# -------------------------------------------------------------------------------------------------------- baselines


def demographic_baselines(ctx: Context, dataset: str, ratio: float, repeat: int, label_fraction=None,
                          recent: int | None = None) -> dict:
    """Majority class and LR on TF-IDF bag-of-items, on the user models' split (`demographics_splits`).

    With `recent`, also LR on the bag of each user's last `recent` items only (`lr_tfidf_last{recent}`): what the user
    models see, since they keep only the most recent `max_behaviors`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from .finetuning import FinetuneArguments, demographics_splits

    name = ctx.data_name(dataset)
    data = ctx.data(name) if label_fraction is None else ctx.data(name, ctx.settings.scale_users)
    args = FinetuneArguments(dataset=name, label_fraction=label_fraction or ratio, split_seed=repeat)
    train, validation, test = demographics_splits(data, args)

    def bag(keep=None):  # each user's items (only the last `keep` of them) as one document
        return lambda part: [" ".join(f"i{b}" for b in (ids[-keep:] if keep else ids)) for ids in part["behavior_ids"]]

    def fit_transform(vectorizer, docs):  # fitted on the training users only
        return [vectorizer.fit_transform(docs(train)), vectorizer.transform(docs(validation)),
                vectorizer.transform(docs(test))]

    items = dict(token_pattern=r"\S+", sublinear_tf=True, min_df=1)
    features = {"lr_tfidf": fit_transform(TfidfVectorizer(**items), bag())}
    if recent is not None:
        features[f"lr_tfidf_last{recent}"] = fit_transform(TfidfVectorizer(**items), bag(recent))
    # The same model on the words of the behavior texts (what the user models read) instead of item identities.
    texts = lambda part: [" ".join(data.behaviors[b] for b in ids) for ids in part["behavior_ids"]]  # noqa: E731
    features["lr_tfidf_words"] = fit_transform(TfidfVectorizer(sublinear_tf=True, min_df=2), texts)
    out = {"majority": {}, **{variant: {} for variant in features}}
    for head in ("age", "gender"):
        y_train, y_val, y_test = (np.asarray(p[head], dtype=float) for p in (train, validation, test))
        keep_train, keep_val, keep_test = (~np.isnan(y) for y in (y_train, y_val, y_test))
        y_train, y_val, y_test = (y[k].astype(int) for y, k in ((y_train, keep_train), (y_val, keep_val),
                                                                 (y_test, keep_test)))
        majority = np.bincount(y_train).argmax()
        prediction = np.full(len(y_test), majority)
        out["majority"][f"{head}_accuracy"] = accuracy_score(y_test, prediction)
        out["majority"][f"{head}_macro_f1"] = f1_score(y_test, prediction, average="macro")
        if head == "gender":
            out["majority"]["gender_auc"] = 0.5
        for variant, (x_train, x_val, x_test) in features.items():
            best = None
            if len(np.unique(y_train)) < 2:  # a tiny --quick split
                out[variant].update({k: v for k, v in out["majority"].items() if k.startswith(head)})
                continue
            for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0):  # C chosen on the validation users by macro-F1
                model = LogisticRegression(C=c, max_iter=2000, class_weight=None)
                model.fit(x_train[keep_train], y_train)
                score = f1_score(y_val, model.predict(x_val[keep_val]), average="macro")
                if best is None or score > best[0]:
                    best = (score, c, model)
            model = best[2]
            prediction = model.predict(x_test[keep_test])
            out[variant][f"{head}_accuracy"] = accuracy_score(y_test, prediction)
            out[variant][f"{head}_macro_f1"] = f1_score(y_test, prediction, average="macro")
            out[variant][f"{head}_C"] = best[1]
            if head == "gender":
                scores = model.predict_proba(x_test[keep_test])[:, 1]
                out[variant]["gender_auc"] = (roc_auc_score(y_test, scores) if len(np.unique(y_test)) > 1
                                              else math.nan)
    for metrics in out.values():
        metrics["accuracy"] = float(np.mean([metrics["age_accuracy"], metrics["gender_accuracy"]]))
        metrics["macro_f1"] = float(np.mean([metrics["age_macro_f1"], metrics["gender_macro_f1"]]))
    return {v: {k: float(x) for k, x in m.items()} for v, m in out.items()}


def cosine_scores(data, part, max_behaviors: int = 50) -> np.ndarray:
    """Untrained: cosine between the TF-IDF word vector of the user's last `max_behaviors` behaviors before the
    impression and that of the ad's texts (title, and description where there is one)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    if not hasattr(data, "_reproduce_word_tfidf"):
        data._reproduce_word_tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform(data.behaviors)
    words = data._reproduce_word_tfidf
    seq = data.sequences()
    users, ends = np.asarray(part["user_index"]), np.asarray(part["history_end"])
    rows, cols = [], []
    for row, (user, end) in enumerate(zip(users.tolist(), ends.tolist())):
        start = seq.offsets[user] + max(0, end - max_behaviors)
        ids = seq.behavior_ids[start: seq.offsets[user] + end]
        rows.extend([row] * len(ids))
        cols.extend(ids.tolist())
    history = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), words.shape[0])) @ words
    ads = words[np.asarray(part["ad_title_id"])]
    descriptions = np.asarray(part["ad_description_id"])
    if (descriptions >= 0).any():
        extra = words[np.where(descriptions >= 0, descriptions, 0)].multiply((descriptions >= 0)[:, None])
        ads = ads + sp.csr_matrix(extra)
    return np.asarray(normalize(history).multiply(normalize(ads)).sum(axis=1)).ravel()


def ctr_baselines(ctx: Context, dataset: str, ratio: float, repeat: int, only=None) -> dict:
    """Item mean click rate (smoothed), LR on user + item one-hots, and the untrained history-ad TF-IDF cosine, on
    the user models' CTR split."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .finetuning import FinetuneArguments, ctr_splits

    name = ctx.data_name(dataset)
    data = ctx.data(name)
    train, validation, test = ctr_splits(data, FinetuneArguments(task="ctr", dataset=name, label_fraction=ratio,
                                                                 split_seed=repeat))
    columns = lambda part: (np.asarray(part["user_index"]), np.asarray(part["ad_title_id"]),  # noqa: E731
                            np.asarray(part["label"]))
    (u_tr, i_tr, y_tr), (u_va, i_va, y_va), (u_te, i_te, y_te) = map(columns, (train, validation, test))
    prior, strength = y_tr.mean(), 5.0
    clicks, shows = {}, {}
    for item, label in zip(i_tr.tolist(), y_tr.tolist()):
        clicks[item] = clicks.get(item, 0) + label
        shows[item] = shows.get(item, 0) + 1
    item_mean = lambda items: np.array([(clicks.get(i, 0) + strength * prior) / (shows.get(i, 0) + strength)  # noqa
                                        for i in items.tolist()])
    n_users, n_items = len(data.users), len(data.behaviors)

    def features(users, items):
        rows = np.arange(len(users))
        user_part = sp.csr_matrix((np.ones(len(users)), (rows, users)), shape=(len(users), n_users))
        item_part = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(len(items), n_items))
        return sp.hstack([user_part, item_part]).tocsr()

    def scores(y, p):
        ok = len(np.unique(y)) > 1
        return {"auc": roc_auc_score(y, p) if ok else math.nan, "ap": average_precision_score(y, p) if y.any()
                else math.nan}

    if only == ("cosine_tfidf",):
        return {"cosine_tfidf": {k: float(x) for k, x in scores(y_te, cosine_scores(data, test)).items()}}
    out = {"item_mean": scores(y_te, item_mean(i_te)), "cosine_tfidf": scores(y_te, cosine_scores(data, test))}
    best = None
    x_tr, x_va, x_te = features(u_tr, i_tr), features(u_va, i_va), features(u_te, i_te)
    if len(np.unique(y_tr)) > 1:
        for c in (0.03, 0.1, 0.3, 1.0, 3.0):
            model = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr)
            score = scores(y_va, model.decision_function(x_va))["auc"]
            if best is None or (not math.isnan(score) and score > best[0]):
                best = (score, c, model)
        out["lr_user_item"] = {**scores(y_te, best[2].decision_function(x_te)), "C": best[1]}
    else:
        out["lr_user_item"] = dict(out["item_mean"])
    return {v: {k: float(x) for k, x in m.items()} for v, m in out.items()}


def run_baselines(ctx: Context):
    s = ctx.settings
    done = ctx.records.done("baselines")
    jobs = [("demographics", ctx.data_name(MOVIELENS))] + [("ctr", ctx.data_name(d)) for d in s.ctr_datasets]
    for task, dataset in jobs:
        for ratio in s.ratios:
            for repeat in range(s.repeats):
                wanted = (("majority", "lr_tfidf", "lr_tfidf_words", f"lr_tfidf_last{s.history_length}")
                          if task == "demographics" else ("item_mean", "lr_user_item", "cosine_tfidf"))
                missing = tuple(v for v in wanted
                                if ("baselines", task, dataset, "-", "-", v, ratio, repeat) not in done)
                if missing:
                    plan_baselines(ctx, "baselines", baseline_run, (task, dataset, ratio, repeat, missing))


def baseline_run(ctx: Context, task: str, dataset: str, ratio: float, repeat: int, missing: tuple) -> dict:
    if task == "demographics":
        results = demographic_baselines(ctx, dataset, ratio, repeat, recent=ctx.settings.history_length)
    else:
        results = ctr_baselines(ctx, dataset, ratio, repeat, only=missing if len(missing) == 1 else None)
    return {v: m for v, m in results.items() if v in missing}


def plan_baselines(ctx: Context, experiment: str, function, args: tuple):
    """A job computing `function(ctx, task, dataset, ratio, repeat, ...)`: {variant: metrics}, recorded with preset
    and setting "-"."""
    task, dataset, ratio, repeat = args[:4]

    def record(results, seconds):
        for variant, metrics in results.items():
            ctx.records.add(experiment, {
                "experiment": experiment, "task": task, "dataset": dataset, "preset": "-", "setting": "-",
                "variant": variant, "ratio": ratio, "repeat": repeat, "metrics": metrics, "seconds": seconds,
            })
        log(f"{experiment} {task} {dataset} ratio={ratio} repeat={repeat}: " + ", ".join(
            f"{v} {m.get('accuracy', m.get('auc')):.4f}" for v, m in results.items()))

    ctx.plan(Job(experiment, function, args, record))


# ------------------------------------------------------------------------------------------------------ experiments


def run_table2(ctx):
    s = ctx.settings
    for preset in s.demographic_presets:
        run_grid(ctx, "table2", "demographics", MOVIELENS, preset, "mbp+nbp", {}, tuple(VARIANTS), s.ratios)


def run_table3(ctx):
    s = ctx.settings
    for dataset in s.ctr_datasets:
        for preset in s.ctr_presets:
            run_grid(ctx, "table3", "ctr", dataset, preset, "mbp+nbp", {}, tuple(VARIANTS), s.ratios,
                     repeats=s.ctr_repeats)


ABLATION = {"mbp only": {"use_nbp": False}, "nbp only": {"use_mbp": False}, "mbp+nbp": {}}


def run_ablation(ctx):
    s = ctx.settings
    ratio = (s.ablation_ratio,)
    # CTR: on the synthetic task with the scale setting (where pre-training has something to give), else the first.
    ctr_dataset = SYNTHETIC if s.sweep_data == "scale" and SYNTHETIC in s.ctr_datasets else s.ctr_datasets[0]
    jobs = [("demographics", MOVIELENS, "hsa"), ("ctr", ctr_dataset, "bert4rec" if not ctx.quick else s.ctr_presets[0])]
    for task, dataset, preset in [job for job in jobs if job[0] in s.ablation_tasks]:
        grid = sweep_grid(ctx) if task == "demographics" else dict(dataset=dataset, ratios=ratio,
                                                                     repeats=s.ctr_repeats)
        run_grid(ctx, "ablation", task, preset=preset, setting_name="none", setting={}, variants=("scratch",), **grid)
        for name, setting in ABLATION.items():
            run_grid(ctx, "ablation", task, preset=preset, setting_name=name, setting=setting,
                     variants=("ptum_finetune",), **grid)


def sweep_grid(ctx) -> dict:
    """Dataset, ratios and pre-training size of the demographics sweeps: MovieLens at `ablation_ratio`, or the
    synthetic `scale` setting (`scale_users` pre-train, `scale_labeled` of them labeled)."""
    s = ctx.settings
    if s.sweep_data == "movielens":
        return dict(dataset=MOVIELENS, ratios=(s.ablation_ratio,))
    return scale_grid(ctx, s.scale_labeled[0])


def scale_grid(ctx, labeled: int) -> dict:
    """The synthetic `scale` setting: every user pre-trains; `labeled` of the training users carry labels."""
    s = ctx.settings
    fraction = labeled / int(round(0.8 * s.scale_users))
    return dict(dataset=SYNTHETIC, ratios=(labeled,), num_users=s.scale_users,
                max_steps=s.scale_pretrain_steps, label_fraction_of=lambda _: fraction)


def run_lambda(ctx):
    # lambda = 0 is the MBP-only objective: it shares the ablation's "mbp only" pre-training instead of computing an
    # NBP loss that is multiplied by zero.
    run_sweep(ctx, "lambda", ctx.settings.lambdas, lambda value: f"lambda={value:g}",
              lambda value: {} if value == 1 else {"use_nbp": False} if value == 0 else {"nbp_weight": value})


def run_k(ctx):
    run_sweep(ctx, "k", ctx.settings.ks, lambda value: f"K={value}",
              lambda value: {} if value == 2 else {"num_next": value})


def run_sweep(ctx, experiment: str, values, name, setting_of):
    """PTUM finetune on demographics (HSA; `sweep_grid`) for each value of one pre-training setting; the default
    value's setting is {}, so it shares the main pre-training."""
    for value in values:
        run_grid(ctx, experiment, "demographics", preset="hsa", setting_name=name(value), setting=setting_of(value),
                 variants=("ptum_finetune",), repeats=ctx.settings.sweep_repeats, **sweep_grid(ctx))


def run_scale(ctx):
    """Synthetic: every user pre-trains; each of `scale_labeled` (a count) of them carry labels for training."""
    s = ctx.settings
    done = ctx.records.done("scale")
    for labeled in s.scale_labeled:
        grid = scale_grid(ctx, labeled)
        for repeat in range(s.repeats):
            if ("scale", "demographics", SYNTHETIC, "-", "-", "lr_tfidf_words", labeled, repeat) not in done:
                plan_baselines(ctx, "scale", scale_baseline_run,
                               ("demographics", SYNTHETIC, labeled, repeat, grid["label_fraction_of"](None)))
        # The pre-training reads `scale_users` synthetic users; the fine-tune loads the same users.
        run_grid(ctx, "scale", "demographics", preset="hsa", setting_name="mbp+nbp", setting={},
                 variants=tuple(VARIANTS), **grid)


def scale_baseline_run(ctx: Context, task: str, dataset: str, labeled: int, repeat: int, fraction: float) -> dict:
    return demographic_baselines(ctx, dataset, labeled, repeat, label_fraction=fraction)


def user_vectors(model_dir: Path, data, random_init: bool = False) -> np.ndarray:
    """Every user's vector from a pre-trained PTUM model (or the same architecture, random weights), in the order of
    `data.users`, with the library's embedding path (each behavior encoded once)."""
    import torch
    from transformers import AutoTokenizer

    from . import PTUMConfig, PTUMModel
    from .data import BehaviorTokenCache
    from .embedding import iter_user_embeddings

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if random_init:
        torch.manual_seed(0)
        model = PTUMModel(PTUMConfig.from_pretrained(str(model_dir)))
    else:
        model = PTUMModel.from_pretrained(str(model_dir))
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, model.config.max_tokens_per_behavior)
    return np.concatenate([vectors for _, vectors in iter_user_embeddings(model, data, cache)])


def probe_scores(vectors: np.ndarray, data, ratio: float, repeat: int) -> dict:
    """LR (C on the validation users by macro-F1) on fixed user vectors, on the user models' split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from .finetuning import FinetuneArguments, demographics_splits

    index = {user: row for row, user in enumerate(data.users["user_id"])}
    parts = demographics_splits(data, FinetuneArguments(label_fraction=ratio, split_seed=repeat))
    x = [vectors[[index[u] for u in part["user_id"]]] for part in parts]
    scaler = StandardScaler().fit(x[0])
    x = [scaler.transform(v) for v in x]
    out = {}
    for head in ("age", "gender"):
        y = [np.asarray(part[head], dtype=float) for part in parts]
        keep = [~np.isnan(v) for v in y]
        y = [v[k].astype(int) for v, k in zip(y, keep)]
        xs = [v[k] for v, k in zip(x, keep)]
        best = None
        for c in (0.001, 0.01, 0.1, 1.0, 10.0):
            model = LogisticRegression(C=c, max_iter=3000).fit(xs[0], y[0])
            score = f1_score(y[1], model.predict(xs[1]), average="macro")
            if best is None or score > best[0]:
                best = (score, c, model)
        prediction = best[2].predict(xs[2])
        out[f"{head}_accuracy"] = accuracy_score(y[2], prediction)
        out[f"{head}_macro_f1"] = f1_score(y[2], prediction, average="macro")
        if head == "gender" and len(np.unique(y[2])) > 1:
            out["gender_auc"] = roc_auc_score(y[2], best[2].predict_proba(xs[2])[:, 1])
    out["accuracy"] = float(np.mean([out["age_accuracy"], out["gender_accuracy"]]))
    out["macro_f1"] = float(np.mean([out["age_macro_f1"], out["gender_macro_f1"]]))
    return {k: float(v) for k, v in out.items()}


def run_probe(ctx):
    """Is the pre-trained user vector informative? LR on frozen vectors of the HSA model pre-trained for table2 vs the
    same architecture with random weights, on the same splits as the baselines."""
    s = ctx.settings
    dataset = ctx.data_name(MOVIELENS)
    label = s.model_label("hsa")
    done = ctx.records.done("probe")
    todo = [(v, r, k) for v in ("probe_ptum", "probe_random") for r in s.ratios for k in range(s.repeats)
            if ("probe", "demographics", dataset, label, "mbp+nbp", v, r, k) not in done]
    if not todo:
        return
    model_dir, pretraining = pretraining_job(ctx, "probe", dataset, "hsa", {})

    def record(results, _):
        for (variant, ratio, repeat), metrics in results:
            ctx.records.add("probe", {"experiment": "probe", "task": "demographics", "dataset": dataset,
                                      "preset": label, "setting": "mbp+nbp", "variant": variant, "ratio": ratio,
                                      "repeat": repeat, "metrics": metrics, "seconds": 0, "size": s.size})
            log(f"probe {label} {variant} ratio={ratio} repeat={repeat}: accuracy={metrics['accuracy']:.4f}")

    ctx.plan(Job("probe", probe_run, (dataset, model_dir, todo), record, after=pretraining))


def probe_run(ctx: Context, dataset: str, model_dir: Path, todo: list) -> list:
    data = ctx.data(dataset)
    results = []
    for variant, random_init in (("probe_ptum", False), ("probe_random", True)):
        with quiet():
            vectors = user_vectors(model_dir, data, random_init)
        results += [((v, r, k), probe_scores(vectors, data, r, k)) for v, r, k in todo if v == variant]
    return results


RUNNERS = {"baselines": run_baselines, "table2": run_table2, "table3": run_table3, "ablation": run_ablation,
           "lambda": run_lambda, "k": run_k, "scale": run_scale, "probe": run_probe}


# ------------------------------------------------------------------------------------------------------------ tables


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def mean_std(values) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def paired(a: dict, b: dict, metric: str) -> str:
    """Mean ± std of a - b over the repeats both have, and how many are > 0."""
    common = sorted(set(a) & set(b))
    diffs = [a[r][metric] - b[r][metric] for r in common
             if metric in a[r] and metric in b[r] and not math.isnan(a[r][metric]) and not math.isnan(b[r][metric])]
    if not diffs:
        return "n/a"
    positive = sum(d > 0 for d in diffs)
    spread = f" ± {np.std(diffs, ddof=1):.3f}" if len(diffs) > 1 else ""
    return f"{np.mean(diffs):+.3f}{spread} ({positive}/{len(diffs)} > 0)"


def group(records):
    """{(task, dataset, preset, setting, ratio): {variant: {repeat: metrics}}}."""
    out = {}
    for r in records:
        cell = out.setdefault((r["task"], r["dataset"], r["preset"], r["setting"], r["ratio"]), {})
        cell.setdefault(r["variant"], {})[r["repeat"]] = r["metrics"]
    return out


def baseline_cells(ctx):
    return group(ctx.records.load("baselines"))


def variant_name(variant: str) -> str:
    if variant.startswith("lr_tfidf_last"):
        return f"LR, TF-IDF bag of the last {variant[len('lr_tfidf_last'):]} items"
    return VARIANT_NAMES.get(variant, variant)


def ratio_label(ratio) -> str:
    return f"{ratio:.0%}" if isinstance(ratio, float) and ratio <= 1.0 else f"{ratio} users"


def history_length(label: str) -> int | None:
    """The number of recent behaviors a user model of this table label sees; None for a baseline row ("-")."""
    if label == "-":
        return None
    label = re.sub(r"\s*\{.*\}$", "", label)  # a free-text --tag says nothing about the model
    match = re.search(r"\[(\d+) behaviors\]", label)
    if match:
        return int(match.group(1))
    size = re.search(r"\[(\w+)\]", label)
    from .configuration_ptum import PTUMConfig

    return SIZES[size.group(1) if size and size.group(1) in SIZES else "small"].get(
        "max_behaviors", PTUMConfig().max_behaviors)


def with_baselines(cells, baselines=None):
    """Each cell's key and its variants, joined by the baseline rows of the same task, dataset and ratio.

    Of the LR baselines on a user's last N items, only the one with the model's own N joins, as `lr_tfidf_same`."""
    for key, variants in sorted(cells.items(), key=lambda kv: str(kv[0])):
        rows = dict(variants)
        same = f"lr_tfidf_last{history_length(key[2])}"
        for (b_task, b_dataset, _, _, b_ratio), b_variants in (baselines or {}).items():
            if (b_task, b_dataset, b_ratio) == (key[0], key[1], key[4]):
                rows.update({("lr_tfidf_same" if v == same and key[2] != "-" else v): m
                             for v, m in b_variants.items()
                             if not v.startswith("lr_tfidf_last") or (v == same and key[2] != "-")})
        yield key, rows


def variant_table(cells, metrics, baselines=None, include_setting=False) -> list[str]:
    """Rows: (dataset, preset, [setting], ratio, variant, n, metrics...)."""
    head = ["dataset", "model"] + (["setting"] if include_setting else []) + ["labels", "variant", "n"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, dataset, preset, setting, ratio), rows in with_baselines(cells, baselines):
        for variant, by_repeat in rows.items():
            values = [mean_std([m.get(metric, math.nan) for m in by_repeat.values()]) for metric in metrics]
            cells_ = [dataset, preset] + ([setting] if include_setting else []) + [
                ratio_label(ratio), variant_name(variant), str(len(by_repeat))]
            lines.append("| " + " | ".join(cells_ + values) + " |")
    return lines


def paired_table(cells, metrics, comparisons, baselines=None) -> list[str]:
    head = ["dataset", "model", "labels", "comparison"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (task, dataset, preset, setting, ratio), rows in with_baselines(cells, baselines):
        for a, b in comparisons:
            if a in rows and b in rows:
                label = f"{variant_name(a)} − {variant_name(b)}"
                lines.append("| " + " | ".join([dataset, preset, ratio_label(ratio), label] + [
                    paired(rows[a], rows[b], m) for m in metrics]) + " |")
    return lines


PROBE_COMPARISONS = [("probe_ptum", "probe_random"), ("probe_ptum", "lr_tfidf")]
DEMOGRAPHIC_COMPARISONS = [("ptum_finetune", "scratch"), ("ptum_frozen", "scratch"), ("ptum_finetune", "lr_tfidf"),
                           ("scratch", "lr_tfidf"), ("ptum_finetune", "lr_tfidf_same"), ("scratch", "lr_tfidf_same")]
SCALE_COMPARISONS = [("ptum_finetune", "scratch"), ("ptum_frozen", "scratch"), ("ptum_finetune", "lr_tfidf_words"),
                     ("scratch", "lr_tfidf_words"), ("ptum_finetune", "lr_tfidf")]
CTR_COMPARISONS = [("ptum_finetune", "scratch"), ("ptum_frozen", "scratch"), ("ptum_finetune", "lr_user_item"),
                   ("ptum_finetune", "item_mean")]


def write_tables(ctx: Context, header: str):
    out = ctx.output_dir
    base = baseline_cells(ctx)
    notes = ("Mean ± sample std over the repeats (n); repeat r = split seed r. Paired differences: per split, "
             "then mean ± std and the number of splits where it is > 0.")
    sections = {}
    b_demo = {k: v for k, v in base.items() if k[0] == "demographics"}
    b_ctr = {k: v for k, v in base.items() if k[0] == "ctr"}
    if base:
        sections["baselines"] = ["## Baselines on the user models' splits", "", notes, "", "### Demographics", ""] + \
            variant_table(b_demo, DEMOGRAPHIC_METRICS) + ["", "### CTR", ""] + variant_table(b_ctr, CTR_METRICS)
    for name, title, metrics, comparisons in (
        ("table2", "Table 2 analogue: demographics", DEMOGRAPHIC_METRICS, DEMOGRAPHIC_COMPARISONS),
        ("table3", "Table 3 analogue: CTR", CTR_METRICS, CTR_COMPARISONS),
    ):
        cells = group(ctx.records.load(name))
        if cells:
            b = b_demo if name == "table2" else b_ctr
            sections[name] = [f"## {title}", "", notes, ""] + variant_table(cells, metrics, b) + [
                "", "### Paired differences", ""] + paired_table(cells, metrics, comparisons, b)
    for name, title in (("ablation", "Fig. 3 analogue: pre-training tasks"), ("lambda", "Fig. 4 analogue: lambda"),
                        ("k", "Fig. 5 analogue: K")):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        lines = [f"## {title}", "", notes, ""]
        for task, metrics in (("demographics", DEMOGRAPHIC_METRICS), ("ctr", CTR_METRICS)):
            part = {k: v for k, v in cells.items() if k[0] == task}
            if part:
                lines += variant_table(part, metrics, include_setting=True) + [""]
                if name == "ablation":
                    lines += ablation_paired(part, metrics) + [""]
        sections[name] = lines
    cells = group(ctx.records.load("probe"))
    if cells:
        sections["probe"] = ["## Linear probe: LR on frozen user vectors", "", notes, ""] + variant_table(
            cells, DEMOGRAPHIC_METRICS, b_demo) + ["", "### Paired differences", ""] + paired_table(
            cells, DEMOGRAPHIC_METRICS, PROBE_COMPARISONS, b_demo)
    cells = group(ctx.records.load("scale"))
    if cells:  # its baselines are recorded beside the models (preset "-"): join them as in table2
        b_scale = {k: v for k, v in cells.items() if k[2] == "-"}
        models = {k: v for k, v in cells.items() if k[2] != "-"} or b_scale
        sections["scale"] = ["## Synthetic at scale", "", notes, ""] + variant_table(
            models, DEMOGRAPHIC_METRICS, b_scale if models is not b_scale else None) + [
            "", "### Paired differences", ""] + paired_table(models, DEMOGRAPHIC_METRICS, SCALE_COMPARISONS, b_scale)
    for name, lines in sections.items():
        atomic_text(out / f"{name}.md", header + "\n".join(lines) + "\n")
    return sections


def ablation_paired(cells, metrics) -> list[str]:
    """Each pre-training setting's PTUM finetune minus the from-scratch run (setting `none`) on the same splits."""
    lines = ["| dataset | model | labels | setting − none | " + " | ".join(metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    for (task, dataset, preset, setting, ratio), variants in sorted(cells.items(), key=lambda kv: str(kv[0])):
        if setting == "none" or "ptum_finetune" not in variants:
            continue
        none = cells.get((task, dataset, preset, "none", ratio), {}).get("scratch")
        if none:
            lines.append("| " + " | ".join([dataset, preset, ratio_label(ratio), setting] + [
                paired(variants["ptum_finetune"], none, m) for m in metrics]) + " |")
    return lines


# ------------------------------------------------------------------------------------------------------------- plots


def write_plots(ctx: Context) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    base = baseline_cells(ctx)

    def save(fig, name):
        path = ctx.output_dir / name
        tmp = path.with_name(f".tmp-{path.name}")
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    def series(by_repeat, metric):
        values = [m.get(metric, math.nan) for m in by_repeat.values()]
        values = [v for v in values if not math.isnan(v)]
        return (np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0.0) if values else (math.nan, 0.0)

    for name, metrics, task in (("table2", ("age_accuracy", "gender_accuracy", "gender_auc"), "demographics"),
                                ("table3", ("auc",), "ctr")):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        panels = sorted({(c[1], c[2]) for c in cells})
        fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4.6 * len(panels), 3.6 * len(metrics)),
                                 squeeze=False)
        for column, (dataset, preset) in enumerate(panels):
            for row, metric in enumerate(metrics):
                ax = axes[row][column]
                ratios = sorted({c[4] for c in cells if c[1:3] == (dataset, preset)})
                variant_rows = {}
                for ratio in ratios:
                    key = (task, dataset, preset, "mbp+nbp", ratio)
                    _, cell = next(with_baselines({key: cells[key]}, base))
                    for variant, by_repeat in cell.items():
                        if variant == "item_mean" and task == "demographics":
                            continue
                        variant_rows.setdefault(variant, []).append((ratio, *series(by_repeat, metric)))
                for variant, points in variant_rows.items():
                    x, y, e = zip(*points)
                    style = "--" if variant in BASELINE_VARIANTS + ("lr_tfidf_same",) else "-"
                    ax.errorbar(x, y, yerr=e, marker="o", linestyle=style, capsize=3,
                                label=variant_name(variant))
                ax.set_title(f"{preset}, {dataset}", fontsize=9)
                ax.set_xlabel("share of labeled training users")
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"{name}.png")

    for name, xlabel in (("ablation", "pre-training tasks"), ("lambda", "lambda (NBP weight)"), ("k", "K")):
        cells = group(ctx.records.load(name))
        if not cells:
            continue
        models = sorted({(c[0], c[1], c[2]) for c in cells})
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.4), squeeze=False)
        for ax, (task, dataset, preset) in zip(axes[0], models):
            metrics = ("age_accuracy", "gender_accuracy") if task == "demographics" else ("auc",)
            part = {c: v for c, v in cells.items() if c[:3] == (task, dataset, preset)}
            order = {"none": 0, "mbp only": 1, "nbp only": 2, "mbp+nbp": 3}
            keys = sorted(part, key=lambda c: order.get(c[3], 0) if name == "ablation"
                          else float(c[3].split("=")[1]))
            labels = [c[3] for c in keys]
            for offset, metric in enumerate(metrics):
                points = [series(next(iter(part[c].values())), metric) for c in keys]
                y, e = zip(*points)
                if name == "ablation":
                    x = np.arange(len(keys)) + 0.35 * (offset - (len(metrics) - 1) / 2)
                    ax.bar(x, y, width=0.35, yerr=e, capsize=3, label=metric)
                    ax.set_xticks(np.arange(len(keys)), labels, rotation=15)
                else:
                    x = [float(label.split("=")[1]) for label in labels]
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=metric)
            if name == "ablation":
                lows = [v for c in keys for v in [series(next(iter(part[c].values())), m)[0] for m in metrics]]
                lows = [v for v in lows if not math.isnan(v)]
                if lows:
                    ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.05))
            ax.set_title(f"{preset}, {dataset}, {ratio_label(keys[0][4])} labels", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"{name}.png")
    return written


# --------------------------------------------------------------------------------------------------------- utilities


def atomic_text(path: Path, text: str):
    from .training_utils import atomic_write_text

    atomic_write_text(path, text)


def atomic_json(path: Path, value):
    atomic_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def quiet():
    """Silence transformers/accelerate chatter and progress bars during the many runs (errors still raise)."""
    import transformers

    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        transformers.logging.set_verbosity(old)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_header(ctx: Context, argv) -> str:
    from . import __version__

    return (f"<!-- generated by ptum_hf.reproduce; do not edit -->\n"
            f"Rebuilt from `raw/*.jsonl` by `ptum-hf reproduce {' '.join(argv)}` · ptum-hf {__version__} · "
            f"git {git_commit()[:12]}{' · QUICK (tiny model, synthetic data in place of MovieLens)' if ctx.quick else ''}"
            f". The invocations that produced the records (arguments, seeds, model size) are in `runs.jsonl`.\n\n")


@contextlib.contextmanager
def worker_pool(ctx: Context, jobs: int, threads: int):
    """`ctx.pool`: `jobs` spawned processes with `threads // jobs` threads each (none for jobs=1)."""
    if jobs <= 1:
        yield
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    initargs = (ctx.settings, str(ctx.output_dir), str(ctx.work_dir), ctx.quick, max(1, threads // jobs))
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                               initargs=initargs)
    ctx.pool, ctx.workers = pool, jobs
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        ctx.pool, ctx.workers = None, 1
        pool.shutdown()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings = build_settings(args)
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip() and e.strip() != "none"]
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; allowed: {', '.join(EXPERIMENTS)}")
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    output_dir = Path(args.output_dir)
    work_dir = Path(args.work_dir) if args.work_dir else (output_dir / ".work" if args.quick
                                                           else Path("outputs/reproduce"))
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings, output_dir, work_dir, args.quick)
    start = time.perf_counter()
    from . import __version__

    run_info = {"argv": argv, "version": __version__, "git_commit": git_commit(), "python": platform.python_version(),
                "torch": torch.__version__, "threads": torch.get_num_threads(), "settings": asdict(settings),
                "model_overrides": settings.model_overrides, "experiments": experiments, "quick": args.quick,
                "jobs": args.jobs, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    header = run_header(ctx, argv)
    if not experiments:  # `--experiments none`: only rebuild the tables and plots from the records
        write_tables(ctx, header)
        write_plots(ctx)

    def experiment_done(experiment):
        ctx.timings[f"experiment {experiment} done at"] = round(time.perf_counter() - start, 1)
        log(f"experiment {experiment} done")
        write_tables(ctx, header)
        write_plots(ctx)

    status = "stopped"
    try:
        with worker_pool(ctx, args.jobs, torch.get_num_threads()):
            for experiment in experiments:
                RUNNERS[experiment](ctx)
            log(f"{len(ctx.jobs)} jobs planned: " + ", ".join(
                f"{e} {sum(j.experiment == e for j in ctx.jobs)}" for e in experiments))
            run_jobs(ctx, experiment_done)
        if experiments:
            write_tables(ctx, header)
            write_plots(ctx)
        status = "finished"
    finally:  # one line per invocation, also for a stopped one: the exact commands behind the records
        run_info.update(status=status, seconds=round(time.perf_counter() - start, 1), timings=ctx.timings,
                        pretraining=pretraining_summary(ctx))
        with open(output_dir / "runs.jsonl", "a") as handle:
            handle.write(json.dumps(run_info, default=str) + "\n")
    log(f"done in {run_info['seconds']:.0f}s; tables and plots in {output_dir}")
    return run_info


if __name__ == "__main__":
    main()
