"""Scaling of ptum-hf pre-training in streaming mode: time and peak memory of one epoch over 10k, 100k and 1M
synthetic users (`load_behavior_dataset("synthetic", num_users=N, streaming=True)`: rows with behavior_texts, tokenized
by the PretrainingCollator per batch, collated in a DataLoader worker).

    python benchmarks/bench_scaling.py                                   # 10k full epoch; 100k and 1M projected
    python benchmarks/bench_scaling.py --sizes 10000,100000 --full-epoch-max 100000 --steps 300

Each size runs in its own process. Sizes up to --full-epoch-max run a whole epoch; larger ones run --steps steps and
project the epoch as steps_per_epoch x mean step time (the smallest size runs both, to check the projection). Linear
time means a constant step time whatever N is; flat memory means the same peak RSS.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH_USERS = 32


def child(a) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from ptum_hf import PTUMConfig, PTUMForPretraining
    from ptum_hf.data import PretrainingCollator, load_behavior_dataset, train_behavior_tokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    stream = load_behavior_dataset("synthetic", num_users=a.size, seed=0, streaming=True)
    # The tokenizer is trained on the first 2,048 users, which are the same for every size.
    sample = load_behavior_dataset("synthetic", num_users=2048, seed=0, streaming=True)
    texts = [t for row in sample for t in row["behavior_texts"]]
    tokenizer = train_behavior_tokenizer(texts, vocab_size=8000)
    del texts, sample
    config = PTUMConfig.from_preset("hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    collator = PretrainingCollator(
        tokenizer=tokenizer,
        max_tokens=config.max_tokens_per_behavior,
        max_behaviors=config.max_behaviors,
        num_negatives=config.num_negatives,
        num_next=config.num_next,
        seed=0,
    )
    loader = DataLoader(
        stream,
        batch_size=BATCH_USERS,
        collate_fn=collator,
        num_workers=a.num_workers,
        prefetch_factor=4 if a.num_workers else None,
    )
    model = PTUMForPretraining(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if a.adam == "fused" else {}))
    steps_per_epoch = math.ceil(a.size / BATCH_USERS)
    limit = steps_per_epoch if a.full_epoch else min(a.steps, steps_per_epoch)
    t_data, t_step, users = [], [], 0
    start = time.perf_counter()
    fetch = time.perf_counter()
    for step, batch in enumerate(itertools.islice(loader, limit)):
        got = time.perf_counter()
        C.train_step(model, optimizer, batch)
        done = time.perf_counter()
        if step >= a.warmup:
            t_data.append(got - fetch)
            t_step.append(done - fetch)
            users += int(batch["mbp_labels"].shape[0])
        fetch = time.perf_counter()
    wall = time.perf_counter() - start
    del loader
    mean_step = float(np.mean(t_step))
    half = len(t_step) // 2
    res = {
        "size": a.size,
        "steps_run": limit,
        "steps_per_epoch": steps_per_epoch,
        "full_epoch": a.full_epoch,
        "step_s": round(mean_step, 4),
        "step_s_first_half": round(float(np.mean(t_step[:half])), 4),
        "step_s_second_half": round(float(np.mean(t_step[half:])), 4),
        "users_per_s": round(users / float(np.sum(t_step)), 2),
        "data_wait_share": round(float(np.sum(t_data)) / float(np.sum(t_step)), 4),
        "epoch_s_projected": round(steps_per_epoch * mean_step, 1),
        "peak_rss_mib": C.peak_rss_mib(),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    if a.full_epoch:
        res["epoch_s_measured"] = round(wall, 1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--steps", type=int, default=150, help="steps timed for a projected epoch")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--full-epoch-max", type=int, default=10000, help="run whole epochs up to this many users")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--adam", choices=["fused", "foreach"], default="fused")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--full-epoch", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.size:
        print(json.dumps(child(a), separators=(",", ":")))
        return
    runs = []
    sizes = [int(s) for s in a.sizes.split(",")]
    for size in sizes:
        modes = [False]
        if size <= a.full_epoch_max:
            modes = [False, True] if size == min(sizes) else [True]
        for full in modes:
            argv = [
                str(Path(__file__).resolve()),
                "--size",
                str(size),
                "--steps",
                str(a.steps),
                "--warmup",
                str(a.warmup),
                "--num-workers",
                str(a.num_workers),
                "--threads",
                str(a.threads),
            ]
            argv += (["--full-epoch"] if full else []) + ["--adam", a.adam]
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "1")}
            out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=C.ROOT, env=env)
            if out.returncode:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"size {size} failed")
            result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
            print(json.dumps(result, separators=(",", ":")), file=sys.stderr)
            runs.append(result)
    summary = {"machine": C.machine(), "runs": runs}
    print(json.dumps(summary, separators=(",", ":")))
    write_results(a, summary)


def write_results(a, summary):
    lines = C.header("bench_scaling.py", summary["machine"], a.threads)
    lines[-1] += (
        f" Streaming synthetic users (hsa preset, {BATCH_USERS} users per batch, texts tokenized per "
        f"batch in {a.num_workers} DataLoader worker(s)), one process per size."
    )
    lines += [
        "",
        "| users | steps run / per epoch | step s (1st half / 2nd half) | users/s | epoch time | waiting for data "
        "| peak RSS MiB (main + worker) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        epoch = (
            f"{r['epoch_s_measured']} s measured (projected from the steps: {r['epoch_s_projected']} s)"
            if r["full_epoch"]
            else f"{r['epoch_s_projected']} s projected"
        )
        lines.append(
            f"| {r['size']:,} | {r['steps_run']} / {r['steps_per_epoch']} | {r['step_s']} "
            f"({r['step_s_first_half']} / {r['step_s_second_half']}) | {r['users_per_s']} | {epoch} "
            f"| {100 * r['data_wait_share']:.1f}% | {r['peak_rss_mib']} + {r['peak_rss_worker_mib']} |"
        )
    C.write_section("scaling", "Scaling: one streaming epoch over 10k / 100k / 1M users", "\n".join(lines))


if __name__ == "__main__":
    main()
