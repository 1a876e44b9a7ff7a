"""Shared pieces of the benchmarks: the reference's corpus as a ptum-hf dataset (and back), the ptum-hf training
step, measurements (FLOPs, matmul peak, RSS) and RESULTS.md sections.

The reference implementation (../shared/reference) is imported, never copied: it is the performance baseline.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT / ".." / "shared" / "reference"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
sys.path.insert(0, str(ROOT / "src"))


def reference():
    """(bench, reference) modules of ../shared/reference."""
    path = str(REFERENCE_DIR.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    import bench  # noqa: E402
    import reference as R  # noqa: E402

    return bench, R


# ----------------------------------------------------------------------------- data


def word_tokenizer(words: list[str]):
    """A word-level fast tokenizer: [PAD]=0, [UNK]=1, then `words` in order (the reference's word_dict layout:
    PADDING=0, UNK=1, then the vocabulary), so both implementations see the same token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


def records_to_dataset(records):
    """The reference corpus (user id, token lists, times) -> a ptum-hf `BehaviorDataset` (a title's text is its
    words joined by spaces; identical titles become one behavior)."""
    import pandas as pd

    from ptum_hf.data.dataset import BehaviorDataset, users_dataset
    from ptum_hf.data.report import IngestReport

    user_ids, texts, times, lengths = [], [], [], []
    for user, titles, stamps in records:
        order = sorted(range(len(titles)), key=lambda i: stamps[i])[:200]  # as build_userbehavior
        user_ids.append(user)
        texts.extend(" ".join(titles[i]) for i in order)
        times.extend(int(stamps[i]) for i in order)
        lengths.append(len(order))
    codes, vocabulary = pd.factorize(np.asarray(texts, dtype=object))
    offsets = np.r_[0, np.cumsum(lengths)]
    users = users_dataset(user_ids, offsets, codes.astype(np.int64), np.asarray(times, np.int64))
    report = IngestReport(
        files=["<reference synth_records>"],
        rows_read=len(texts),
        events_read=len(texts),
        events_kept=len(texts),
        users_read=len(user_ids),
        users_kept=len(user_ids),
    )
    return BehaviorDataset(users=users, behaviors=[str(t) for t in vocabulary], report=report)


def dataset_to_records(data, tokenizer, token_cache):
    """A ptum-hf dataset -> the reference's inputs: records with each behavior as its token strings (from the
    same tokenizer), and a word_dict mapping every token to its id (PADDING/UNK = the tokenizer's 0/1)."""
    seq = data.sequences()
    vocab = tokenizer.get_vocab()
    id_to_token = [None] * len(vocab)
    for token, index in vocab.items():
        id_to_token[index] = token
    tokens = [
        [id_to_token[t] for t in token_cache.token_ids[token_cache.offsets[b] : token_cache.offsets[b + 1]]]
        for b in range(len(token_cache))
    ]
    user_ids = data.users["user_id"]
    records = []
    for u in range(len(seq)):
        ids, stamps = seq.user(u)
        records.append((user_ids[u], [tokens[i] for i in ids.tolist()], stamps.tolist()))
    word_dict = {"PADDING": [0, 999999], "UNK": [1, 999999]}
    for index, token in enumerate(id_to_token):
        if index >= 2:
            word_dict[token] = [index, 999]
    return records, word_dict


def load_corpus(name: str, users: int, seed: int = 0):
    """(ptum-hf dataset, tokenizer, reference records, reference word_dict) of one corpus:
    `reference` (bench.synth_records), `movielens` (../shared/data/ml-100k) or `synthetic` (ptum-hf's catalogue)."""
    from ptum_hf.data import BehaviorTokenCache, load_behavior_dataset, train_behavior_tokenizer

    if name == "reference":
        bench, _ = reference()
        records, word_dict = bench.synth_records(users, seed)
        data = records_to_dataset(records)
        words = sorted((w for w in word_dict if w not in ("PADDING", "UNK")), key=lambda w: word_dict[w][0])
        tokenizer = word_tokenizer(words)
        return data, tokenizer, records, word_dict
    if name == "movielens":
        data = load_behavior_dataset("movielens-100k")
    elif name == "synthetic":
        data = load_behavior_dataset("synthetic", num_users=users, seed=seed)
    else:
        raise ValueError(name)
    tokenizer = train_behavior_tokenizer(data.behaviors, vocab_size=8000)
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, 30)
    records, word_dict = dataset_to_records(data, tokenizer, cache)
    return data, tokenizer, records, word_dict


def save_corpus(name: str, users: int, seed: int, folder) -> Path:
    """Build a corpus once (in the parent process) and save ptum-hf's side of it: the users table (Arrow), the
    behavior texts and the tokenizer. ptum-hf children then read it memory-mapped, as a real run reads its data,
    instead of holding the reference's Python records; reference children still build their records in-process."""
    folder = Path(folder) / f"{name}-{users}-{seed}"
    if not (folder / "done").exists():
        data, tokenizer, _, _ = load_corpus(name, users, seed)
        data.users.save_to_disk(str(folder / "users"))
        (folder / "behaviors.json").write_text(json.dumps(data.behaviors))
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        (folder / "done").write_text("")
    return folder


def load_saved_corpus(folder):
    """(dataset, tokenizer) saved by `save_corpus`."""
    import datasets
    from transformers import AutoTokenizer

    from ptum_hf.data.dataset import BehaviorDataset
    from ptum_hf.data.report import IngestReport

    folder = Path(folder)
    users = datasets.load_from_disk(str(folder / "users"))
    behaviors = json.loads((folder / "behaviors.json").read_text())
    report = IngestReport(files=[str(folder)], users_read=len(users), users_kept=len(users))
    return BehaviorDataset(users=users, behaviors=behaviors, report=report), AutoTokenizer.from_pretrained(
        str(folder / "tokenizer")
    )


# ----------------------------------------------------------------------------- measurements


def train_step(model, optimizer, batch, autocast=None):
    """One pre-training step as `ptum-hf pretrain` takes it (clipped at 1.0); waits for the loss: the time is real."""
    import contextlib

    import torch

    with autocast or contextlib.nullcontext():
        out = model(**batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return float(out.loss)


def header(script: str, machine: dict, threads: int) -> list[str]:
    """The command and machine lines every RESULTS.md section starts with (the description follows on the line)."""
    command = f"python benchmarks/{script} " + " ".join(sys.argv[1:])
    return [
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']} ({'/'.join(machine['simd'])}), {machine['cpus']} CPUs, torch "
        f"{machine['torch']}, {threads} threads.",
    ]


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_peaks() -> dict:
    """This machine's matmul peak (bench.matmul_peak: best of 5 x 10 back-to-back 2048^2 matmuls), fp32 and bf16.

    A CPU without native bf16 (no AVX512-BF16 / AMX) runs bf16 matmuls on a slow fallback (a 2048^2 one took 154 s
    on a Zen 3 where fp32 takes 0.1 s); its bf16 peak is then measured on 256^2 matmuls so the run stays short."""
    bench, _ = reference()
    cpu = torch.device("cpu")
    fp32 = bench.matmul_peak(torch.float32, cpu)
    native = bf16_native()
    bf16 = bench.matmul_peak(torch.bfloat16, cpu) if native else bench.matmul_peak(torch.bfloat16, cpu, 256, 2, 2)
    return {"peak_gflops_fp32": round(fp32, 1), "peak_gflops_bf16": round(bf16, 1), "bf16_native": native}


def bf16_native() -> bool:
    """Whether bf16 matmuls run at least at fp32 speed here (probe: one 256^2 matmul of each)."""
    a = torch.randn(256, 256)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x
        start = time.perf_counter()
        x @ x
        rates[dtype] = 1.0 / max(time.perf_counter() - start, 1e-9)
    return rates[torch.bfloat16] >= 0.5 * rates[torch.float32]


def machine() -> dict:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {
        "cpu": model,
        "simd": simd,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def run_child(argv: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `python argv...` (in `env`, default this process's environment) and return the last JSON line it
    printed."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if out.returncode:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise RuntimeError(f"child {' '.join(argv)} failed with {out.returncode}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def write_section(name: str, title: str, body: str):
    """Replace (or append) the section `name` of RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# ptum-hf benchmarks\n\n"
    block = f"{start}\n## {title}\n\n{body.rstrip()}\n\n_Measured {datetime.datetime.now():%Y-%m-%d %H:%M}._\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from ptum_hf.atomic import atomic_write_text  # here: the children (the reference's too) must not import ptum_hf

    atomic_write_text(RESULTS, text)  # a run stopped mid-write leaves RESULTS.md whole
