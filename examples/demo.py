"""The main job on built-in data (`make demo`).

PTUM's use case: a large log of user behaviour, few labels.

1. Pre-train the HSA user model with PTUM (MBP + NBP) on every user of the synthetic behavior log, without labels.
2. Fit the simple baselines on the labeled training users only (`--labeled_users` of them): logistic regression on
   TF-IDF of the behavior texts' words, of the items, and on an SVD of the items fitted on every user.
3. Fine-tune age and gender on the same labeled users three ways: from scratch, from PTUM frozen ("no finetune":
   only the head trains), and from PTUM fine-tuned.
4. Print every row on the same test users, and PTUM finetune against from scratch and the strongest baseline; the
   pre-trained model and its card are under `<output_dir>/pretrain/model`.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ptum_hf.atomic import atomic_write_text
from ptum_hf.configuration_ptum import SIZE_PRESETS
from ptum_hf.data import load_behavior_data
from ptum_hf.finetuning import (
    FinetuneArguments,
    default_training_arguments,
    finetune,
    label_fraction_for,
    task_splits,
)
from ptum_hf.modelcard import PTUMModelCardData
from ptum_hf.pretraining import PretrainingArguments, pretrain
from ptum_hf.reproduce.baselines import fit_demographic_baselines
from ptum_hf.reproduce.settings import VARIANT_NAMES, VARIANTS, variant_recipe

COLUMNS = ("age_accuracy", "age_macro_f1", "gender_accuracy", "gender_auc")
BASELINES = ("lr_tfidf_words", "lr_tfidf", "svd_lr")  # the strongest simple models (`ptum-hf reproduce` baselines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--num_users", type=int, default=10000, help="synthetic users, the log pre-training reads")
    parser.add_argument("--labeled_users", type=int, default=200, help="labeled training users per split")
    parser.add_argument("--splits", type=int, default=3, help="user splits (split seeds 0..splits-1)")
    parser.add_argument("--size", choices=tuple(SIZE_PRESETS), default="paper", help="model size")
    parser.add_argument("--pretrain_epochs", type=int, default=3)
    parser.add_argument("--finetune_epochs", type=int, default=5)
    parser.add_argument("--pretrained", default=None, help="a model folder to fine-tune instead of pre-training one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic log, pre-training and fine-tuning")
    args = parser.parse_args()
    for name, low in (("num_users", 50), ("labeled_users", 10), ("splits", 1), ("pretrain_epochs", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.finetune_epochs < 1:
        parser.error(f"--finetune_epochs must be at least 1, got {args.finetune_epochs}")
    most = int(0.8 * args.num_users)  # the training part of the 80/10/10 user split
    if args.labeled_users > most:
        parser.error(f"--labeled_users must be at most {most} (80% of --num_users), got {args.labeled_users}")
    if args.pretrained and not (Path(args.pretrained) / "config.json").is_file():
        parser.error(f"--pretrained {args.pretrained}: not a model folder (no config.json there)")
    return args


def table(rows: dict) -> str:
    """Mean over the splits of each model's test metrics."""
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, runs in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{np.mean([run[c] for run in runs]):.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def comparison(rows: dict, ours: str, others: list[str]) -> str:
    """`ours` minus the best of `others` per metric, paired by split: mean and the splits where it is > 0. The best is
    picked by its mean on the test users, which favours the others."""
    lines = []
    for column in COLUMNS:
        best = max(others, key=lambda name: np.mean([run[column] for run in rows[name]]))
        gaps = [a[column] - b[column] for a, b in zip(rows[ours], rows[best])]
        lines.append(f"  {column}: {np.mean(gaps):+.3f} ({sum(g > 0 for g in gaps)}/{len(gaps)} splits) vs {best}")
    return "\n".join(lines)


def pretrain_demo_model(args, out: Path) -> Path:
    print(f"[1/3] pre-training on {args.num_users} synthetic users (no labels used)", flush=True)
    pretrain_args = PretrainingArguments(
        output_dir=str(out / "pretrain"),
        dataset="synthetic",
        size=args.size,
        num_users=args.num_users,
        synthetic_seed=args.seed,
        num_epochs=args.pretrain_epochs,
        per_device_batch_size=64,
        learning_rate=1e-3,
        eval_steps=200,
        save_steps=400,
        logging_steps=50,
        seed=args.seed,
    )
    return pretrain(pretrain_args, card_data=PTUMModelCardData(model_name="ptum-hsa-synthetic-demo"))


def main():
    args = parse_args()
    out = Path(args.output_dir)
    start = time.perf_counter()
    if args.pretrained:
        model_dir = Path(args.pretrained)
    else:
        model_dir = pretrain_demo_model(args, out)
        print(f"      done in {time.perf_counter() - start:.0f}s; model and card in {model_dir}", flush=True)

    data = load_behavior_data("synthetic", num_users=args.num_users, synthetic_seed=args.seed)
    rows = {}
    for split in range(args.splits):
        # The users `finetune` trains, validates and tests on (`task_splits`), so the baselines get the same ones.
        fraction = label_fraction_for(data, args.labeled_users, split)
        options = dict(label_fraction=fraction, split_seed=split, max_eval_samples=None)
        train, validation, test = task_splits(data, FinetuneArguments(**options))
        print(f"[2/3] split {split + 1}/{args.splits}: baselines on {len(train)} labeled users", flush=True)
        fitted = fit_demographic_baselines(data, train, validation, test)
        for name in BASELINES:
            rows.setdefault(VARIANT_NAMES[name], []).append({column: fitted[name][column] for column in COLUMNS})
        for variant in VARIANTS:  # the recipes of `ptum-hf reproduce`
            name = VARIANT_NAMES[variant]
            overrides, learning_rate = variant_recipe(variant)
            print(f"[3/3] split {split + 1}/{args.splits}: fine-tuning on the same users: {name}", flush=True)
            finetune_args = FinetuneArguments(model_name_or_path=str(model_dir), **options, **overrides)
            training_args = default_training_arguments(
                str(out / "finetune" / f"split{split}" / name.replace(" ", "-")),
                "demographics",
                num_train_epochs=args.finetune_epochs,
                learning_rate=learning_rate,
                seed=args.seed,
                save_total_limit=1,
            )
            _, metrics = finetune(finetune_args, training_args, data=data)
            rows.setdefault(name, []).append({column: metrics[f"test_{column}"] for column in COLUMNS})
    ours, scratch = VARIANT_NAMES["ptum_finetune"], VARIANT_NAMES["scratch"]
    report = "\n\n".join(
        [
            table(rows),
            f"{ours} minus from scratch (the same architecture without pre-training):\n"
            + comparison(rows, ours, [scratch]),
            f"{ours} minus the strongest baseline on each metric:\n"
            + comparison(rows, ours, [VARIANT_NAMES[name] for name in BASELINES]),
        ]
    )
    atomic_write_text(out / "results.md", report + "\n")
    settings = {**vars(args), "model": str(model_dir), "labeled_users_per_split": len(train), "test_users": len(test)}
    atomic_write_text(out / "results.json", json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(
        f"\nDemographics on the synthetic test users ({len(test)} per split), {len(train)} labeled training users, "
        f"mean of {args.splits} splits:\n"
    )
    print(report)
    print(f"\nTotal {time.perf_counter() - start:.0f}s. Pre-trained model with its card: {model_dir}")


if __name__ == "__main__":
    main()
