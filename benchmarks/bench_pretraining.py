"""Pre-training throughput of ptum-hf against the reference (the authors' algorithm, ../shared/reference), timed in
the same command on the same data, batch size and model shapes (300-d words, 16 x 16 heads, additive attention 200,
at most 100 behaviors, P=4, K=2).

    python benchmarks/bench_pretraining.py                                  # reference corpus, fp32 and bf16
    python benchmarks/bench_pretraining.py --data movielens --steps 20      # MovieLens-100K
    python benchmarks/bench_pretraining.py --data synthetic --users 5000    # ptum-hf's synthetic catalogue

Each implementation runs in its own child process (so peak RSS is its own), alternately (reference, ptum-hf,
ptum-hf, reference, ... for --rounds), and each child measures the 2048^2 matmul peak of the machine itself. Ratios
are taken between children of the same round. Prints one JSON line per dtype and writes a section of
benchmarks/RESULTS.md.

Measured per implementation: users/s and behaviors/s (history slots fed to the model, <= 100 per user), model FLOPs
per user (torch.utils.flop_counter, forward + backward, matmuls and attention), achieved GFLOP/s and MFU against the
matmul peak of the same dtype, peak RSS, and the share of step time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH_USERS = 32  # the reference's batch: 32 users = 32 MBP + 32 NBP samples


def reference_batches(R, batch_users, userbehavior, keys, word_dict):
    """bench.epochs with a batch size: the reference's generator, restarted each epoch as Keras' fit_generator."""
    while True:
        gen = R.batchgenerator(batch_users, userbehavior, keys, word_dict, return_users=True)
        for _ in range(len(keys) // batch_users):
            yield next(gen)


# ----------------------------------------------------------------------------- children


def child_reference(a) -> dict:
    """The reference's own training loop (bench.py's measurement, on any corpus)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    bench, R = C.reference()
    torch.set_num_threads(a.threads)
    random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)
    amp = torch.bfloat16 if a.dtype == "bfloat16" else None
    if a.data == "reference":  # bench.py's own corpus, generated in-process as bench.py does
        _, _, records, word_dict = C.load_corpus(a.data, a.users, a.seed)
    else:  # the same users and token ids as the ptum-hf child
        from ptum_hf.data import BehaviorTokenCache

        data, tokenizer = C.load_saved_corpus(a.corpus_dir)
        cache = BehaviorTokenCache.build(data.behaviors, tokenizer, 30)
        records, word_dict = C.dataset_to_records(data, tokenizer, cache)
        del data, cache
    userbehavior = R.build_userbehavior(records)
    del records
    keys = list(userbehavior.keys())
    nraw = {u: len(v) for u, v in userbehavior.items()}
    model = R.PTUM(len(word_dict))
    opt = R.make_optimizer(model)
    model.train()
    gen = reference_batches(R, a.batch_users, userbehavior, keys, word_dict)
    t_data, t_step, n_beh = [], [], 0
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        batch = next(gen)
        t1 = time.perf_counter()
        loss = R.train_step(model, opt, batch, amp)
        float(loss)
        t2 = time.perf_counter()
        if s >= a.warmup:
            t_data.append(t1 - t0)
            t_step.append(t2 - t0)
            n_beh += int((batch[0][2][: a.batch_users] > 0).sum())
    training_rss = C.peak_rss_mib()  # before the FLOP-count step, which is measurement, not training
    x, y, w = R.to_torch(next(gen))
    with FlopCounterMode(display=False) as fc:
        R.forward_loss(model, x, y, w, amp).backward()
    opt.zero_grad(set_to_none=True)
    return summarize(
        a,
        "reference",
        t_data,
        t_step,
        n_beh,
        fc.get_total_flops(),
        {"mean_raw_behaviors": round(float(np.mean(list(nraw.values()))), 1), "peak_rss_training_mib": training_rss},
    )


def child_ours(a) -> dict:
    """ptum-hf's pre-training step, as `ptum_hf.pretraining.pretrain` runs it: DataLoader over `UserRows` with the
    seeded pre-training collator, PTUMForPretraining (hsa preset = the paper's HSA shapes), AdamW, grad clipping."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from ptum_hf import PTUMConfig, PTUMForPretraining
    from ptum_hf.data import SeededCollator, UserRows
    from ptum_hf.pretraining import pretraining_collator

    register_cpu_attention_flops()
    torch.set_num_threads(a.threads)
    random.seed(a.seed), np.random.seed(a.seed), torch.manual_seed(a.seed)
    data, tokenizer = C.load_saved_corpus(a.corpus_dir)
    config = PTUMConfig.from_preset("hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    collator = SeededCollator(pretraining_collator(data, tokenizer, config, seed=a.seed), a.seed)
    loader = DataLoader(
        UserRows(data.users),
        batch_size=a.batch_users,
        shuffle=True,
        drop_last=True,
        collate_fn=collator,
        num_workers=a.num_workers,
        persistent_workers=a.num_workers > 0,
        generator=torch.Generator().manual_seed(a.seed),
    )
    model = PTUMForPretraining(config)
    model.train()
    if a.gradient_checkpointing:
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if a.adam == "fused" else {}))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")

    def batches():
        while True:
            yield from loader  # noqa: F821 (deleted only after the last step)

    it = batches()
    t_data, t_step, n_beh = [], [], 0
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        C.train_step(model, optimizer, batch, autocast)
        t2 = time.perf_counter()
        if s >= a.warmup:
            t_data.append(t1 - t0)
            t_step.append(t2 - t0)
            n_beh += int((batch["mbp_history_indices"] != -1).sum())
    training_rss = C.peak_rss_mib()  # before the FLOP-count step (dispatch modes change what checkpointing frees)
    batch = next(it)
    with FlopCounterMode(display=False) as fc:
        with autocast:
            out = model(**batch)
        out.loss.backward()
    optimizer.zero_grad()
    extra = {
        "num_workers": a.num_workers,
        "adam": a.adam,
        "gradient_checkpointing": a.gradient_checkpointing,
        "unique_behaviors_per_batch": int(batch["behavior_input_ids"].shape[0]),
        "tokens_per_batch": int(batch["behavior_attention_mask"].sum()),
        "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
        "peak_rss_training_mib": training_rss,
    }
    del it, loader  # stop the workers so that their peak RSS can be read
    return summarize(a, "ptum-hf", t_data, t_step, n_beh, fc.get_total_flops(), extra)


def register_cpu_attention_flops():
    """torch.utils.flop_counter has formulas for the CUDA attention kernels only; count the CPU flash kernel that
    F.scaled_dot_product_attention runs here with the same formulas (else attention would count as 0 FLOPs)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu not in fc.flop_registry:
        fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)(fc.sdpa_flop)
        fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)(
            fc.sdpa_backward_flop
        )


def summarize(a, impl, t_data, t_step, n_beh, flops, extra) -> dict:
    import resource

    import numpy as np

    total = float(np.sum(t_step))
    step_s = total / len(t_step)
    res = {
        "impl": impl,
        "data": a.data,
        "dtype": a.dtype,
        "users": a.users,
        "batch_users": a.batch_users,
        "steps": a.steps,
        "threads": a.threads,
        "step_s": round(step_s, 4),
        "step_s_median": round(float(np.median(t_step)), 4),
        "users_per_s": round(a.batch_users * len(t_step) / total, 3),
        "behaviors_per_s": round(n_beh / total, 1),
        "behaviors_per_user": round(n_beh / (a.batch_users * len(t_step)), 2),
        "data_wait_share": round(float(np.sum(t_data)) / total, 4),
        "gflops_per_user": round(flops / a.batch_users / 1e9, 3),
        "gflops_achieved": round(flops / step_s / 1e9, 2),
        "peak_rss_mib": C.peak_rss_mib(),
        **extra,
    }
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if children:
        res["peak_rss_worker_mib"] = round(children, 1)
    res.update(C.matmul_peaks())
    peak = res["peak_gflops_bf16" if a.dtype == "bfloat16" else "peak_gflops_fp32"]
    res["mfu"] = round(res["gflops_achieved"] / peak, 4)
    return res


# ----------------------------------------------------------------------------- parent


def child_argv(a, impl, dtype):
    argv = [
        str(Path(__file__).resolve()),
        "--child",
        impl,
        "--dtype",
        dtype,
        "--data",
        a.data,
        "--users",
        str(a.users),
        "--batch-users",
        str(a.batch_users),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--seed",
        str(a.seed),
        "--threads",
        str(a.threads),
        "--num-workers",
        str(a.num_workers),
        "--corpus-dir",
        str(a.corpus_dir),
    ]
    return argv + ["--adam", a.adam] + (["--gradient-checkpointing"] if a.gradient_checkpointing else [])


def run_child(a, impl, dtype, thp: bool) -> dict:
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    result = C.run_child(child_argv(a, impl, dtype), env=env)
    result["thp_alloc"] = "1" if thp else "0"
    print(json.dumps(result, separators=(",", ":")), file=sys.stderr)
    return result


RATIO_KEYS = ("users_per_s", "behaviors_per_s")


def training_rss(result: dict) -> float:
    """Peak RSS over the training steps (results from before this field: the whole child's)."""
    return result.get("peak_rss_training_mib", result["peak_rss_mib"])


def compare(rounds: list[dict]) -> dict:
    """Median over rounds of ptum-hf / reference ratios (each round's children ran back to back)."""
    import numpy as np

    med = lambda values: round(float(np.median(values)), 3)  # noqa: E731
    ours = [r["ours"] for r in rounds]
    ref = [r["reference"] for r in rounds]
    out = {
        "speedup_users_per_s": med([o["users_per_s"] / r["users_per_s"] for o, r in zip(ours, ref)]),
        "flops_per_user_ratio": med([r["gflops_per_user"] / o["gflops_per_user"] for o, r in zip(ours, ref)]),
        "peak_rss_ratio": med(
            [(training_rss(o) + o.get("peak_rss_worker_mib", 0)) / training_rss(r) for o, r in zip(ours, ref)]
        ),
        "mfu_ours": med([o["mfu"] for o in ours]),
        "mfu_reference": med([r["mfu"] for r in ref]),
        "data_wait_share_ours": med([o["data_wait_share"] for o in ours]),
    }
    if all("reference_thp" in r for r in rounds):
        out["speedup_vs_reference_with_thp"] = med(
            [r["ours"]["users_per_s"] / r["reference_thp"]["users_per_s"] for r in rounds]
        )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["reference", "movielens", "synthetic"], default="reference")
    ap.add_argument("--users", type=int, default=1000, help="users generated (reference, synthetic corpora)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per child")
    ap.add_argument("--batch-users", type=int, default=BATCH_USERS, help="users per batch, both implementations")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="reference/ptum-hf pairs per dtype")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="ptum-hf DataLoader workers (collation); 0: collate in the training process",
    )
    ap.add_argument(
        "--adam",
        choices=["fused", "foreach"],
        default="fused",
        help="ptum-hf optimizer: AdamW(fused=True) (one pass over the parameters) or torch's default",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="ptum-hf: recompute the behavior encoder in the backward (less memory, slower)",
    )
    ap.add_argument(
        "--no-thp", action="store_true", help="ptum-hf without THP_MEM_ALLOC_ENABLE=1 (huge pages for large tensors)"
    )
    ap.add_argument(
        "--reference-thp",
        action="store_true",
        help="also time the reference with THP_MEM_ALLOC_ENABLE=1, to show what the allocator alone buys",
    )
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 autocast even without native bf16 matmuls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=["reference", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        result = (child_reference if a.child == "reference" else child_ours)(a)
        print(json.dumps(result, separators=(",", ":")))
        return

    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="ptum-bench-")
    a.corpus_dir = C.save_corpus(a.data, a.users, a.seed, tmp.name)
    summary = {"machine": C.machine(), "data": a.data, "users": a.users, "steps": a.steps, "batch_users": a.batch_users}
    results = {}
    for dtype in a.dtypes.split(","):
        if dtype == "bfloat16" and not a.force_bf16 and not C.bf16_native():
            results[dtype] = {
                "skipped": "this CPU has no native bf16 matmul (no AVX512-BF16/AMX): bf16 autocast "
                "runs every matmul on a slow fallback, for both implementations "
                "(--force-bf16 to run it anyway)"
            }
            print(json.dumps({**summary, "dtype": dtype, **results[dtype]}, separators=(",", ":")))
            continue
        rounds = []
        for r in range(a.rounds):
            order = ["reference", "ours"] if r % 2 == 0 else ["ours", "reference"]
            rnd = {impl: run_child(a, impl, dtype, thp=(impl == "ours" and not a.no_thp)) for impl in order}
            if a.reference_thp:
                rnd["reference_thp"] = run_child(a, "reference", dtype, thp=True)
            rounds.append(rnd)
        results[dtype] = {"rounds": rounds, "compare": compare(rounds)}
        line = {
            **summary,
            "dtype": dtype,
            **results[dtype]["compare"],
            "ours": rounds[-1]["ours"],
            "reference": rounds[-1]["reference"],
        }
        print(json.dumps(line, separators=(",", ":")))
    write_results(a, summary, results)


TARGETS = "users/s >= 10x the reference (fp32); MFU >= 50% of the fp32 matmul peak; data waiting < 5%; peak RSS <= 1/4"


def write_results(a, summary, results):
    command = "python benchmarks/bench_pretraining.py " + " ".join(sys.argv[1:])
    rows = [
        ("users/s", "users_per_s", ""),
        ("behaviors/s", "behaviors_per_s", ""),
        ("history behaviors per user", "behaviors_per_user", ""),
        ("model GFLOP per user (fwd+bwd)", "gflops_per_user", ""),
        ("achieved GFLOP/s", "gflops_achieved", ""),
        ("MFU (vs measured matmul peak)", "mfu", "%"),
        ("matmul peak fp32 / bf16 GFLOP/s", None, ""),
        ("peak RSS MiB, training steps (main + worker)", None, ""),
        ("peak RSS MiB, whole child (with the FLOP-count step)", "peak_rss_mib", ""),
        ("waiting for data", "data_wait_share", "%"),
        ("step time s (mean)", "step_s", ""),
    ]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {summary['machine']['cpu']} ({'/'.join(summary['machine']['simd'])}), "
        f"{summary['machine']['cpus']} CPUs, "
        f"{summary['machine']['mem_gib']} GiB, torch {summary['machine']['torch']}, "
        f"{a.threads} threads. Corpus `{a.data}`"
        + (f" ({a.users} users)" if a.data != "movielens" else "")
        + f", {a.batch_users} users per batch, {a.steps} timed steps after {a.warmup} warm-up, {a.rounds} round(s);"
        " ratios are medians over rounds of children run back to back.",
        "",
    ]
    for dtype, res in results.items():
        if "skipped" in res:
            lines += [f"### {dtype}", "", f"Not run: {res['skipped']}.", ""]
            continue
        last = res["rounds"][-1]
        impls = [("reference", last["reference"]), ("ptum-hf", last["ours"])]
        if "reference_thp" in last:
            impls.insert(1, ("reference + THP", last["reference_thp"]))
        lines += [
            f"### {dtype}",
            "",
            "| | " + " | ".join(name for name, _ in impls) + " |",
            "|---|" + "---|" * len(impls),
        ]
        for label, key, unit in rows:
            cells = []
            for _, r in impls:
                if label.startswith("matmul peak"):
                    cells.append(f"{r['peak_gflops_fp32']} / {r['peak_gflops_bf16']}")
                elif label.startswith("peak RSS MiB, training"):
                    worker = r.get("peak_rss_worker_mib")
                    cells.append(f"{training_rss(r)}" + (f" + {worker}" if worker else ""))
                elif unit == "%":
                    cells.append(f"{100 * r[key]:.1f}%")
                else:
                    cells.append(str(r[key]))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        cmp = res["compare"]
        lines += [
            "",
            f"ptum-hf / reference: **{cmp['speedup_users_per_s']}x users/s**, "
            f"{cmp['flops_per_user_ratio']}x fewer FLOPs per user, peak RSS ratio {cmp['peak_rss_ratio']}"
            + (
                f"; {cmp['speedup_vs_reference_with_thp']}x the reference run with the same allocator setting"
                if "speedup_vs_reference_with_thp" in cmp
                else ""
            )
            + ".",
            "",
        ]
        ours = last["ours"]
        lines += [
            f"ptum-hf settings: DataLoader workers {ours['num_workers']}, AdamW {ours['adam']}, "
            f"gradient checkpointing {ours.get('gradient_checkpointing', False)}, "
            f"THP_MEM_ALLOC_ENABLE={ours['thp_alloc']}; {ours['unique_behaviors_per_batch']} unique behaviors "
            f"and {ours['tokens_per_batch']} tokens in a batch of {a.batch_users} users.",
            "",
        ]
    lines += [f"Targets: {TARGETS}."]
    # One section per setting: the reference's batch of 32 users is the default; other batch sizes get their own.
    name, title = f"pretraining-{a.data}", f"Pre-training throughput: {a.data} corpus"
    if a.batch_users != BATCH_USERS:
        name, title = f"{name}-batch{a.batch_users}", f"{title}, {a.batch_users} users per batch"
    if a.gradient_checkpointing:
        name, title = f"{name}-checkpointing", f"{title}, gradient checkpointing"
    C.write_section(name, title, "\n".join(lines))


if __name__ == "__main__":
    main()
