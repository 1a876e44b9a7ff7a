"""Where do the pre-trained MovieLens user vectors lose what an SVD keeps? (`results/studies/bag_prediction.md` §12)

For each pre-training seed: pre-train PTUM on MovieLens-100K without labels exactly as `ptum-hf reproduce` does for
demographics (its settings for that cell: the `items` recipe, the whole history, 300 epochs of 128 users, HSA,
`small`), then compare two features of the same model on every user split, each with LR fitted as SVD + LR is
(`reproduce.baselines.fit_heads`): the user vector (the probe) and the mean of the user's pre-trained behavior
vectors (each L2-normalised first), i.e. without the user encoder's position and time embeddings and its pooling.

    python examples/pooling_probe.py --data_dir ../shared/data/ml-100k --seeds 0,1,2,3
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from ptum_hf import PTUMModel
from ptum_hf.atomic import atomic_write_json
from ptum_hf.configuration_ptum import SIZE_PRESETS
from ptum_hf.data import BehaviorTokenCache, load_behavior_data
from ptum_hf.data.splits import demographics_splits
from ptum_hf.embedding import encode_behavior_table
from ptum_hf.pretraining import pretrain
from ptum_hf.reproduce.baselines import DEMOGRAPHIC_HEADS, fit_demographic_baselines, probe_split, user_vectors
from ptum_hf.reproduce.report import paired, write_study
from ptum_hf.reproduce.settings import MOVIELENS, Settings
from ptum_hf.reproduce.training import pretraining_arguments, pretraining_identity

PRESET = "hsa"  # the preset whose pre-training `reproduce`'s probe uses
METRICS = ("age_macro_f1", "gender_auc")
FEATURES = {"user": "user vector (the probe)", "behavior_mean": "mean of behavior vectors"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="the MovieLens-100K folder (u.data, u.item, u.user)")
    parser.add_argument("--output_dir", default="outputs/pooling_probe")
    parser.add_argument("--seeds", default="0,1,2,3", help="pre-training seeds, comma separated")
    parser.add_argument("--ratios", default="0.2,1.0", help="label ratios, comma separated")
    parser.add_argument("--splits", type=int, default=20, help="user splits (split seeds 0..splits-1)")
    parser.add_argument(
        "--size", choices=tuple(SIZE_PRESETS), default="small", help="model size (`small`: reproduce's)"
    )
    parser.add_argument("--max_steps", type=int, default=-1, help="pre-training steps (default: the measured epochs)")
    args = parser.parse_args()
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    try:
        args.ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        parser.error(f"--ratios must be numbers separated by commas, got {args.ratios!r}")
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be at least 0, got {min(args.seeds)}")
    if not all(0 < r <= 1 for r in args.ratios):
        parser.error(f"every --ratios value must be in (0, 1], got {args.ratios}")
    if args.splits < 2:  # a paired difference needs a spread
        parser.error(f"--splits must be at least 2, got {args.splits}")
    if args.max_steps == 0 or args.max_steps < -1:
        parser.error(f"--max_steps must be positive (or -1 for the measured epochs), got {args.max_steps}")
    return args


def identity(args, seed: int) -> dict:
    """What decides a seed's pre-training: `reproduce`'s settings for MovieLens demographics."""
    cell = Settings(size=args.size, seed=seed).for_cell("demographics", MOVIELENS)
    return pretraining_identity(cell, MOVIELENS, PRESET, cell.model_overrides, args.max_steps, None)


def check_reusable(out: Path, seeds, args) -> None:
    """Refuse, before any work, a seed folder that holds a pre-training made with other settings."""
    for seed in seeds:
        folder = out / f"seed{seed}"
        if not (folder / "model" / "pretraining_metrics.json").exists():
            continue  # nothing finished there: `pretrain` starts it afresh
        made = json.loads((folder / "identity.json").read_text()) if (folder / "identity.json").exists() else None
        if made != identity(args, seed):
            raise SystemExit(
                f"{folder} holds a pre-training made with other settings ({made or 'unknown'}): "
                "give another --output_dir, or remove that folder"
            )


def pretrained(args, seed: int, out: Path) -> tuple[Path, float]:
    """The seed's pre-training and the seconds it took (0 when an earlier run's is reused)."""
    folder, wanted = out / f"seed{seed}", identity(args, seed)
    if (folder / "model" / "pretraining_metrics.json").exists():
        return folder / "model", 0.0
    start = time.perf_counter()
    model_dir = pretrain(pretraining_arguments(wanted, folder, args.data_dir))
    atomic_write_json(folder / "identity.json", wanted)
    return model_dir, time.perf_counter() - start


def behavior_means(model_dir: Path, data) -> np.ndarray:
    """Each user's mean of their behaviors' L2-normalised pre-trained vectors, in the order of `data.users` (the
    model is loaded again beside `user_vectors`, which stays the probe's own path)."""
    model = PTUMModel.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, model.config.max_tokens_per_behavior)
    table = torch.nn.functional.normalize(encode_behavior_table(model, cache).float(), dim=-1).numpy()
    keep = model.config.max_behaviors  # the behaviors the user vector sees
    return np.stack([table[np.asarray(ids[-keep:], np.int64)].mean(0) for ids in data.users["behavior_ids"]])


def cell(rows: list[dict], feature: str, metric: str) -> str:
    """The feature's mean over the splits, and its difference with SVD + LR paired by split."""
    mean = np.mean([r[feature][metric] for r in rows])
    by_split = {name: {r["split"]: r[name] for r in rows} for name in (feature, "svd_lr")}
    return f"{mean:.3f} ({paired(by_split[feature], by_split['svd_lr'], metric)})"


def main():
    args = parse_args()
    out = Path(args.output_dir)
    check_reusable(out, args.seeds, args)
    data = load_behavior_data(MOVIELENS, args.data_dir)
    parts = {
        (r, s): demographics_splits(data, DEMOGRAPHIC_HEADS, r, s) for r in args.ratios for s in range(args.splits)
    }
    svd = {key: fit_demographic_baselines(data, *split, only=("svd_lr",))["svd_lr"] for key, split in parts.items()}
    head = ["seed", "labels"] + [
        f"{label} {m} (− SVD + LR, splits > 0)" for label in FEATURES.values() for m in METRICS
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    results = []
    for seed in args.seeds:
        model_dir, seconds = pretrained(args, seed, out)
        vectors = {"user": user_vectors(model_dir, data), "behavior_mean": behavior_means(model_dir, data)}
        for ratio in args.ratios:
            rows = [
                {
                    "split": s,
                    "svd_lr": svd[ratio, s],
                    **{f: probe_split(v, data, parts[ratio, s]) for f, v in vectors.items()},
                }
                for s in range(args.splits)
            ]
            results.append({"seed": seed, "ratio": ratio, "pretrain_seconds": round(seconds), "splits": rows})
            cells = [str(seed), f"{ratio:.0%}"] + [cell(rows, f, m) for f in FEATURES for m in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    report = write_study(out, lines, vars(args), results)
    print(f"\nMean over {args.splits} splits, LR fitted as SVD + LR on each feature:\n\n{report}")


if __name__ == "__main__":
    main()
