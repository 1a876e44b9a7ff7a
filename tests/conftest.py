"""What several test files share: tiny model sizes (seconds per test on 2 cores), how tests start real
`ptum-hf pretrain` processes, and single-threaded runs whose logged curves are compared."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from ptum_hf import PTUMConfig
from ptum_hf.configuration_ptum import SIZE_PRESETS

# PTUMConfig overrides for runs through the CLI or the Python API (`config_overrides`): the experiment runner's tiny
# size, with the default tokens per behavior.
TINY = {k: v for k, v in SIZE_PRESETS["tiny"].items() if k != "max_tokens_per_behavior"}

# A whole tiny config for models built directly (tests of the modeling code).
TINY_CONFIG = dict(TINY, vocab_size=60, max_behaviors=12, max_tokens_per_behavior=8, dropout=0.0)


def tiny_config(**overrides) -> PTUMConfig:
    return PTUMConfig(**{**TINY_CONFIG, **overrides})


# The flags of a tiny `ptum-hf pretrain` run (200 synthetic users, batches of 16); each test adds its own.
TINY_RUN = [
    "--num_users",
    "200",
    "--per_device_batch_size",
    "16",
    "--tokenizer_vocab_size",
    "500",
    "--config_overrides",
    json.dumps(TINY),
]


def subprocess_env(**extra) -> dict:
    """One thread per process (the same float reductions in every run, and runs share the machine), offline."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def run_python(script: str, cwd, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -c script` in a fresh process, output captured. stdin is closed: transformers' interactive "run the
    custom code? [y/N]" prompt reads end-of-file, i.e. no, instead of waiting."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ddp_pretrain_command(output_dir, *args) -> list[str]:
    """`ptum-hf pretrain` as two CPU processes (torchrun through `accelerate launch`, on a free local port); run it
    with `subprocess_env(ACCELERATE_USE_CPU="1")`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(port)]
    pretrain = ["-m", "ptum_hf.cli", "pretrain", "--output_dir", str(output_dir), *map(str, args)]
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, *pretrain]


@pytest.fixture
def one_thread():
    """One thread and the caller's determinism setting restored: bitwise-equal runs within a test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def logged(output_dir, key="loss") -> dict[int, list[float]]:
    """step -> every value of `key` logged at that step (a resumed run logs the replayed steps again)."""
    values = {}
    with open(output_dir / "logs" / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            if row["key"] == key:
                values.setdefault(int(row["step"]), []).append(float(row["value"]))
    return values
