"""The main job on built-in data (`make demo`).

1. Pre-train the HSA user model with PTUM (MBP + NBP) on the synthetic behavior log, without labels.
2. Fine-tune age and gender on 20% of the labeled training users three ways: from scratch, from PTUM frozen
   ("no finetune": only the head trains), and from PTUM fine-tuned.
3. Print the three rows side by side; the pre-trained model and its card are under `<output_dir>/pretrain/model`.
"""

import argparse
import json
import time
from pathlib import Path

from ptum_hf.atomic import atomic_write_text
from ptum_hf.data import load_behavior_data
from ptum_hf.finetuning import FinetuneArguments, default_training_arguments, finetune
from ptum_hf.modelcard import PTUMModelCardData
from ptum_hf.pretraining import PretrainingArguments, pretrain
from ptum_hf.reproduce.settings import VARIANT_NAMES, VARIANTS, variant_recipe

COLUMNS = ("age_accuracy", "age_macro_f1", "gender_accuracy", "gender_macro_f1")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--num_users", type=int, default=3000)
    parser.add_argument("--pretrain_epochs", type=int, default=4)
    parser.add_argument("--finetune_epochs", type=int, default=5)
    parser.add_argument("--label_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def table(rows: dict) -> str:
    lines = ["| variant | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[f'test_{c}']:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main():
    args = parse_args()
    out = Path(args.output_dir)
    start = time.perf_counter()
    print(f"[1/2] pre-training on {args.num_users} synthetic users (no labels used)", flush=True)
    pretrain_args = PretrainingArguments(
        output_dir=str(out / "pretrain"),
        dataset="synthetic",
        num_users=args.num_users,
        synthetic_seed=args.seed,
        num_epochs=args.pretrain_epochs,
        per_device_batch_size=64,
        learning_rate=1e-3,
        eval_steps=100,
        save_steps=200,
        logging_steps=20,
        seed=args.seed,
    )
    model_dir = pretrain(pretrain_args, card_data=PTUMModelCardData(model_name="ptum-hsa-synthetic-demo"))
    print(f"      done in {time.perf_counter() - start:.0f}s; model and card in {model_dir}", flush=True)

    data = load_behavior_data("synthetic", num_users=args.num_users, synthetic_seed=args.seed)
    rows = {}
    for step, variant in enumerate(VARIANTS, 1):  # the recipes of `ptum-hf reproduce`
        name = VARIANT_NAMES[variant]
        overrides, learning_rate = variant_recipe(variant)
        print(
            f"[2/2] fine-tuning demographics on {args.label_fraction:.0%} of the labels: {name} "
            f"({step}/{len(VARIANTS)})",
            flush=True,
        )
        finetune_args = FinetuneArguments(
            model_name_or_path=str(model_dir), label_fraction=args.label_fraction, split_seed=args.seed, **overrides
        )
        training_args = default_training_arguments(
            str(out / "finetune" / name.replace(" ", "-")),
            "demographics",
            num_train_epochs=args.finetune_epochs,
            learning_rate=learning_rate,
            seed=args.seed,
            save_total_limit=1,
        )
        _, rows[name] = finetune(finetune_args, training_args, data=data)
    report = table(rows)
    atomic_write_text(out / "results.md", report + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    print(f"\nDemographics on the synthetic test users, {args.label_fraction:.0%} of the training labels:\n")
    print(report)
    print(f"\nTotal {time.perf_counter() - start:.0f}s. Pre-trained model with its card: {model_dir}")


if __name__ == "__main__":
    main()
