"""Pre-training under `accelerate launch` with two CPU processes (DDP over gloo): it runs and writes a model; when one
process is killed or hangs, the other exits with an error in bounded time instead of waiting forever; the run then
resumes from its last checkpoint.

On a machine without GPUs, `accelerate launch --num_processes 2 --cpu` starts a single process (Accelerate's simple
launcher; multi-CPU needs mpirun or torchrun). Two CPU processes are started with torchrun through
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptum_hf.checkpointing import resolve_checkpoint
from ptum_hf.modeling_ptum import PTUMForPretraining

from conftest import TINY_RUN, ddp_pretrain_command, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")

# 190 training users in batches of 16 over 2 processes: 6 steps per epoch, 36 in all; a checkpoint every 3 steps.
RUN = [
    *TINY_RUN,
    "--report_to",
    "none",
    "--num_epochs",
    "6",
    "--save_steps",
    "3",
    "--save_total_limit",
    "2",
    "--eval_steps",
    "100",
    "--logging_steps",
    "100",
    "--seed",
    "3",
    "--deterministic",
    "true",
]
TOTAL_STEPS = 36


def launch(output_dir, *extra, log_name) -> subprocess.Popen:
    env = subprocess_env(ACCELERATE_USE_CPU="1")
    command = ddp_pretrain_command(output_dir, *RUN, *extra)
    log_path = output_dir.parent / log_name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = log_path
    return process


def output_of(process) -> str:
    return process.log_path.read_text(errors="replace")


def wait(process, timeout=240) -> int:
    """The launcher's exit status; a hang guard (not a timing assertion) that kills the whole group and fails."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the launcher hung for {timeout}s:\n{output_of(process)[-4000:]}")


def wait_for(process, path, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {path.name}:\n{output_of(process)[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)


def workers(launcher) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes."""
    ranks = {}
    for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in values:
            ranks[int(values[b"RANK"])] = int(pid)
    assert sorted(ranks) == [0, 1], ranks
    return ranks


def alive(pid) -> bool:
    """Running, sleeping or stopped (a zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_ddp_run_survives_a_dead_process_and_resumes(tmp_path):
    """One process stops answering (SIGSTOP: no crash, no closed socket, the worst case for the others) and is then
    killed: the other fails on its own after `--ddp_timeout` seconds with gloo's timeout error, instead of waiting in
    the all-reduce forever; the launcher reports the failure; a second launch resumes from the last checkpoint and
    writes the model. (A plain SIGKILL is simpler: the other process's socket read fails at once and torchrun stops
    the rest.)"""
    # not the global `random`: the in-process runs of other tests seed it
    seed = int(os.environ.get("PTUM_DISTRIBUTED_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    victim, kill_after = rng.choice([0, 1]), rng.choice([3, 6, 9])
    print(f"PTUM_DISTRIBUTED_SEED={seed}: rank {victim} hangs, then is killed, after checkpoint step_{kill_after}")
    output_dir = tmp_path / "run"
    launcher = launch(output_dir, "--ddp_timeout", "5", log_name="killed.log")
    wait_for(launcher, output_dir / "checkpoints" / f"step_{kill_after}")
    ranks = workers(launcher)
    survivor = ranks[1 - victim]
    os.kill(ranks[victim], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 180  # a hang guard, not a timing assertion
        while alive(survivor) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(survivor), f"rank {1 - victim} still waits for rank {victim}:\n{output_of(launcher)[-4000:]}"
    finally:
        os.kill(ranks[victim], signal.SIGKILL)  # torchrun would do it too, after a 30 s grace period
    assert wait(launcher) != 0
    output = output_of(launcher)
    assert "Timed out waiting 5000ms" in output, output[-4000:]  # the --ddp_timeout, not gloo's 30 min default
    assert "ptum_hf.cli FAILED" in output
    assert not (output_dir / "model").exists()

    latest = resolve_checkpoint(output_dir, "latest")
    assert latest is not None and {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in latest.iterdir()}
    step = json.loads((latest / "progress.json").read_text())["step"]

    resumed = launch(output_dir, "--ddp_timeout", "60", "--resume_from_checkpoint", "latest", log_name="resumed.log")
    assert wait(resumed) == 0, output_of(resumed)[-4000:]
    output = output_of(resumed)
    assert f"resumed from {latest} at step {step}" in output
    assert output.count("model saved to") == 2  # one line per process: both ran to the end
    metrics = json.loads((output_dir / "model" / "pretraining_metrics.json").read_text())
    assert metrics["step"] == TOTAL_STEPS  # 2 processes: half the single-process steps per epoch
    final = resolve_checkpoint(output_dir, "latest")
    assert final.name == f"step_{TOTAL_STEPS}" and (final / "random_states_1.pkl").exists()
    assert PTUMForPretraining.from_pretrained(output_dir / "model").config.hidden_size == 16
