"""Does pre-training pay more as the unlabeled log grows? (`results/studies/bag_prediction.md` §10)

For each size N of a synthetic behavior log: pre-train PTUM on its N users without labels (the same number of steps
for every N), then on 200 labeled users per split compare LR on the frozen pre-trained user vectors (the probe) with
LR on an SVD of the same N users' item bags and LR on TF-IDF of the texts' words. The probe and SVD + LR are fitted
the same way (`reproduce.baselines.fit_heads`), so they differ only in the features.

    python examples/unlabeled_users.py --users 1000,4000,16000 --max_steps 3000
"""

import argparse
import time
from pathlib import Path

import numpy as np

from ptum_hf.configuration_ptum import RECIPES, SIZE_PRESETS
from ptum_hf.data import load_behavior_data
from ptum_hf.finetuning import FinetuneArguments, label_fraction_for, task_splits
from ptum_hf.pretraining import PretrainingArguments, pretrain
from ptum_hf.reproduce.baselines import fit_demographic_baselines, probe_split, user_vectors
from ptum_hf.reproduce.report import write_study

METRICS = ("age_macro_f1", "gender_auc")
BASELINES = {"svd_lr": "SVD + LR", "lr_tfidf_words": "LR, TF-IDF words"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/unlabeled_users")
    parser.add_argument("--users", default="1000,4000,16000", help="sizes of the unlabeled log, comma separated")
    parser.add_argument("--labeled_users", type=int, default=200, help="labeled training users per split")
    parser.add_argument("--splits", type=int, default=5, help="user splits (split seeds 0..splits-1)")
    parser.add_argument("--size", choices=tuple(SIZE_PRESETS), default="small")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="paper")
    parser.add_argument("--max_steps", type=int, default=3000, help="pre-training steps, the same for every size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        args.users = [int(n) for n in args.users.split(",")]
    except ValueError:
        parser.error(f"--users must be integers separated by commas, got {args.users!r}")
    for name, value, low in (("users", min(args.users), 50), ("labeled_users", args.labeled_users, 10)):
        if value < low:
            parser.error(f"--{name} must be at least {low}, got {value}")
    for name in ("splits", "max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.labeled_users > int(0.8 * min(args.users)):
        parser.error(f"--labeled_users must be at most 80% of the smallest of --users, got {args.labeled_users}")
    return args


def measure(args, num_users: int, out: Path) -> dict:
    """Pre-train on `num_users` synthetic users, then probe and fit the baselines on every split."""
    start = time.perf_counter()
    model_dir = pretrain(
        PretrainingArguments(
            output_dir=str(out / f"users{num_users}"),
            dataset="synthetic",
            num_users=num_users,
            synthetic_seed=args.seed,
            size=args.size,
            recipe=args.recipe,
            max_steps=args.max_steps,
            per_device_batch_size=64,
            learning_rate=1e-3,
            eval_steps=args.max_steps,
            save_steps=args.max_steps,
            seed=args.seed,
            report_to="none",
        )
    )
    seconds = time.perf_counter() - start
    data = load_behavior_data("synthetic", num_users=num_users, synthetic_seed=args.seed)
    vectors = user_vectors(model_dir, data)
    splits = []
    for split in range(args.splits):
        fraction = label_fraction_for(data, args.labeled_users, split)
        options = dict(label_fraction=fraction, split_seed=split, max_eval_samples=None)
        parts = task_splits(data, FinetuneArguments(**options))
        fitted = fit_demographic_baselines(data, *parts)
        splits.append({"probe": probe_split(vectors, data, parts), **{name: fitted[name] for name in BASELINES}})
    return {"users": num_users, "pretrain_seconds": round(seconds), "splits": splits}


def row(result: dict) -> str:
    """Mean probe and baselines per metric, and the probe minus each baseline paired by split."""
    splits, cells = result["splits"], [str(result["users"])]
    for metric in METRICS:
        cells.append(f"{np.mean([s['probe'][metric] for s in splits]):.3f}")
        for name in BASELINES:
            gaps = [s["probe"][metric] - s[name][metric] for s in splits]
            cells.append(
                f"{np.mean([s[name][metric] for s in splits]):.3f} ({np.mean(gaps):+.3f}, "
                f"{sum(g > 0 for g in gaps)}/{len(gaps)})"
            )
    return "| " + " | ".join(cells) + " |"


def main():
    args = parse_args()
    out = Path(args.output_dir)
    head = ["unlabeled users"]
    for metric in METRICS:
        head += [f"probe {metric}"] + [f"{label} (probe −, splits > 0)" for label in BASELINES.values()]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    results = []
    for num_users in args.users:
        results.append(measure(args, num_users, out))
        lines.append(row(results[-1]))
        print(lines[-1], flush=True)
    report = write_study(out, lines, vars(args), results)
    print(f"\n{args.labeled_users} labeled users per split, mean of {args.splits} splits:\n\n{report}")


if __name__ == "__main__":
    main()
