"""Embedding throughput of `ptum-hf embed` (`ptum_hf.embedding.write_user_embeddings`) on MovieLens-100K, with and
without the cached behavior vectors, and of the exported user encoder (`ptum-hf export`) in ONNX Runtime, timed
alternately in one process.

    python benchmarks/bench_embedding.py                 # MovieLens-100K, 3 rounds
    python benchmarks/bench_embedding.py --rounds 5 --batch-size 256

With the cache every behavior of the vocabulary is encoded once and each batch only runs the user encoder; without
it each batch encodes its own unique behaviors again and then runs the user encoder; the exported graph does that
same work (a batch's tokens in, user vectors out), so it is compared with that path (with the extra `onnx`
installed; skipped otherwise). Besides users/s
the benchmark reports where the work is: how many behavior encodings each path does, and the model FLOPs
(torch.utils.flop_counter) of the behavior table and of the user encoder, which both paths share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["movielens", "synthetic"], default="movielens")
    ap.add_argument("--users", type=int, default=2000, help="users of the synthetic corpus")
    ap.add_argument("--batch-size", type=int, default=256, help="users per batch (EmbedArguments' default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()

    import bench_pretraining
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ptum_hf import PTUMConfig, PTUMModel, embedding
    from ptum_hf.data import BehaviorTokenCache, load_behavior_dataset, train_behavior_tokenizer
    from ptum_hf.embedding import encode_behavior_table, user_collator, write_user_embeddings

    try:
        import onnxruntime  # noqa: F401

        from ptum_hf.export import export_graph, onnx_session, run_onnx
    except ImportError:
        export_graph = None

    bench_pretraining.register_cpu_attention_flops()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.data == "movielens":
        data = load_behavior_dataset("movielens-100k")
    else:
        data = load_behavior_dataset("synthetic", num_users=a.users, seed=0)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=8000)
    config = PTUMConfig.from_preset(
        "hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, label_heads=data.label_heads or None
    )
    model = PTUMModel(config).eval()
    token_cache = BehaviorTokenCache.build(data.behaviors, tokenizer, config.max_tokens_per_behavior)
    users = len(data.users)
    collator = user_collator(model, token_cache)

    def global_histories(features):
        """The batch's history windows over the whole vocabulary (row = behavior id), as the library embeds."""
        _, history, gaps = collator.histories(features)
        return torch.from_numpy(history), torch.from_numpy(gaps)

    def every_occurrence():
        """No reuse at all: each user's every behavior is encoded for that user (what a pipeline without a behavior
        table does, as the reference's 100-slot layout), then the user encoder; users in the library's order."""
        with torch.inference_mode():
            for features in sorted_batches():
                history, gaps = global_histories(features)
                valid = history >= 0
                ids, mask = token_cache.gather(history[valid].numpy())
                local = torch.full_like(history, -1)
                local[valid] = torch.arange(int(valid.sum()))
                model(torch.as_tensor(ids), torch.as_tensor(mask), local, gaps)

    def sorted_batches():
        """The batches `iter_user_embeddings` encodes: users sorted by history length within windows."""
        window = a.batch_size * embedding.SORT_WINDOW_BATCHES
        for start in range(0, users, window):
            features = list(data.users.select(range(start, min(start + window, users))))
            features.sort(key=lambda f: min(len(f["behavior_ids"]), config.max_behaviors))
            for first in range(0, len(features), a.batch_size):
                yield features[first : first + a.batch_size]

    def onnx_pass(session):
        """The exported user encoder over the same batches as `write_user_embeddings` without the cache."""
        for features in sorted_batches():
            run_onnx(session, collator(features))

    occurrence_times, onnx_times = [], []
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_difference = None
        if export_graph is not None:
            export_graph(model, "user_encoder", Path(tmp) / "user_encoder.onnx")
            session = onnx_session(Path(tmp) / "user_encoder.onnx", threads=a.threads)
            batch = collator(next(sorted_batches()))
            with torch.inference_mode():
                expected = model(**batch).user_embeddings.numpy()
            onnx_difference = float(np.abs(run_onnx(session, batch) - expected).max())
        for r in range(a.rounds + 1):  # round 0 warms up both paths
            for use_cache in (True, False) if r % 2 else (False, True):
                start = time.perf_counter()
                write_user_embeddings(
                    model, data, token_cache, Path(tmp) / "users.parquet", batch_size=a.batch_size, use_cache=use_cache
                )
                if r:
                    times[use_cache].append(time.perf_counter() - start)
            if r:
                start = time.perf_counter()
                every_occurrence()
                occurrence_times.append(time.perf_counter() - start)
            if session is not None:
                start = time.perf_counter()
                onnx_pass(session)
                if r:
                    onnx_times.append(time.perf_counter() - start)

    # Where the work is: behavior encodings per path; time and FLOPs of the table and of the user encoder.
    encodings_uncached = encodings_occurrence = 0
    batches = []
    for features in sorted_batches():
        history, gaps = global_histories(features)
        encodings_uncached += int(torch.unique(history[history >= 0]).numel())
        encodings_occurrence += int((history >= 0).sum())
        batches.append((history, gaps))
    counts = {}
    for count_flops in (False, True):  # timed without a counter (it slows every op down), then counted
        counter = (lambda: FlopCounterMode(display=False)) if count_flops else contextlib.nullcontext
        with torch.inference_mode(), counter() as fc:
            start = time.perf_counter()
            table = encode_behavior_table(model, token_cache)
            table_s = time.perf_counter() - start
        table_flops = fc.get_total_flops() if count_flops else 0
        user_flops, user_s = 0, 0.0
        with torch.inference_mode():
            for history, gaps in batches:
                with counter() as fc:
                    t = time.perf_counter()
                    model(history_indices=history, history_time_gaps=gaps, behavior_embeddings=table)
                    user_s += time.perf_counter() - t
                user_flops += fc.get_total_flops() if count_flops else 0
        counts[count_flops] = (table_flops, table_s, user_flops, user_s)
    table_s, user_s = counts[False][1], counts[False][3]
    table_flops, user_flops = counts[True][0], counts[True][2]

    cached_s, uncached_s = float(np.median(times[True])), float(np.median(times[False]))
    ratios = [u / c for c, u in zip(times[True], times[False])]
    res = {
        "machine": C.machine(),
        "data": a.data,
        "users": users,
        "behaviors": len(data.behaviors),
        "batch_size": a.batch_size,
        "rounds": a.rounds,
        "users_per_s_cached": round(users / cached_s, 1),
        "users_per_s_uncached": round(users / uncached_s, 1),
        "speedup_cache": round(float(np.median(ratios)), 2),
        "users_per_s_occurrence": round(users / float(np.median(occurrence_times)), 1),
        "users_per_s_onnx": round(users / float(np.median(onnx_times)), 1) if onnx_times else None,
        "speedup_onnx_vs_uncached": (
            round(float(np.median([u / o for u, o in zip(times[False], onnx_times)])), 2) if onnx_times else None
        ),
        "onnx_max_abs_difference": onnx_difference,
        "speedup_cache_vs_occurrence": round(
            float(np.median([o / c for c, o in zip(times[True], occurrence_times)])), 2
        ),
        "behavior_encodings_cached": len(data.behaviors),
        "behavior_encodings_uncached": encodings_uncached,
        "behavior_encodings_occurrence": encodings_occurrence,
        "table_gflops": round(table_flops / 1e9, 2),
        "table_s": round(table_s, 3),
        "user_encoder_gflops": round(user_flops / 1e9, 2),
        "user_encoder_s": round(user_s, 3),
    }
    # Upper bound of the cache's speedup if nothing but the behavior encoder differed: the user encoder's share is
    # paid by both paths.
    table_per_encoding = res["table_gflops"] / max(len(data.behaviors), 1)
    for key, encodings in (("", encodings_uncached), ("_occurrence", encodings_occurrence)):
        res["speedup_bound_from_flops" + key] = round(
            (encodings * table_per_encoding + res["user_encoder_gflops"])
            / (res["table_gflops"] + res["user_encoder_gflops"]),
            2,
        )
    print(json.dumps(res, separators=(",", ":")))
    write_results(a, res)


def write_results(a, res):
    lines = C.header("bench_embedding.py", res["machine"], a.threads)
    lines[-1] += (
        f" `write_user_embeddings` on {res['data']} ({res['users']} users, {res['behaviors']} distinct "
        f"behaviors), batch size {res['batch_size']}, hsa preset (random weights: speed does not depend on "
        f"them), median of {res['rounds']} alternating rounds."
    )
    lines += [
        "",
        "| | with behavior cache | without: each batch's unique behaviors | without: every occurrence |",
        "|---|---|---|---|",
        f"| users/s | {res['users_per_s_cached']} | {res['users_per_s_uncached']} | {res['users_per_s_occurrence']} |",
        f"| behavior encodings | {res['behavior_encodings_cached']} | {res['behavior_encodings_uncached']} | "
        f"{res['behavior_encodings_occurrence']} |",
        f"| cache speedup (median of rounds) | | **{res['speedup_cache']}x** | "
        f"**{res['speedup_cache_vs_occurrence']}x** |",
        f"| upper bound from FLOPs | | {res['speedup_bound_from_flops']}x | "
        f"{res['speedup_bound_from_flops_occurrence']}x |",
        "",
        onnx_line(res),
        "",
        "Target: the cache >= 20x faster than without it.",
        "",
        "`ptum-hf embed --no_cache` is the middle column: it still encodes each behavior once per batch. The right "
        "column encodes every behavior of every user for that user, as a pipeline without a behavior table does.",
        "",
        f"Where the time goes: encoding the whole behavior table takes {res['table_s']} s "
        f"({res['table_gflops']} GFLOP); the user encoder over all users takes {res['user_encoder_s']} s "
        f"({res['user_encoder_gflops']} GFLOP) and is the same work on every path. The bounds above are what the "
        "cache could give if behavior encodings were all that differed.",
    ]
    C.write_section(f"embedding-{a.data}", f"Embedding throughput: {a.data}", "\n".join(lines))


def onnx_line(res) -> str:
    if res["users_per_s_onnx"] is None:
        return "ONNX Runtime: not measured (needs the extra `onnx`: `pip install -e '.[onnx]'`)."
    return (
        f"ONNX Runtime, the user encoder exported by `ptum-hf export` over the same batches as the middle column "
        f"(collating included; the graph masks padding where PyTorch packs it away): "
        f"**{res['users_per_s_onnx']} users/s**, {res['speedup_onnx_vs_uncached']}x "
        f"PyTorch's {res['users_per_s_uncached']} (median of rounds); outputs within "
        f"{res['onnx_max_abs_difference']:.1e} of PyTorch's."
    )


if __name__ == "__main__":
    main()
