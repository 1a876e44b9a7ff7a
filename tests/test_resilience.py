"""Crash and resume: a pre-training run killed with SIGKILL resumes (`--resume_from_checkpoint latest`) to exactly the
weights and loss curve of an uninterrupted run; a kill while a checkpoint or the final model is being written never
leaves a folder that resume (or a user) would take for a finished one."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptum_hf.checkpointing import list_checkpoints, resolve_checkpoint, save_checkpoint
from ptum_hf.configuration_ptum import PTUMConfig
from ptum_hf.hub import save_for_hub
from ptum_hf.modeling_ptum import PTUMForPretraining
from ptum_hf.pretraining import PretrainingArguments, pretrain

from conftest import TINY, TINY_RUN, logged, subprocess_env

# 200 users, 10 held out, batches of 16: 12 steps per epoch; 44 steps (the last in mid-epoch); a checkpoint every 4.
RUN = [
    *TINY_RUN,
    "--report_to",
    "csv",
    "--max_steps",
    "44",
    "--save_steps",
    "4",
    "--save_total_limit",
    "3",
    "--eval_steps",
    "10",
    "--logging_steps",
    "1",
    "--seed",
    "7",
    "--deterministic",
    "true",
]
TOTAL_STEPS = 44
CHECKPOINT_FILES = {
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "progress.json",
    "tokenizer",
}


def start_pretraining(output_dir, *extra, log_name="run.log") -> subprocess.Popen:
    output_dir.mkdir(parents=True, exist_ok=True)
    log = open(output_dir.parent / f"{output_dir.name}-{log_name}", "wb")
    command = [sys.executable, "-m", "ptum_hf.cli", "pretrain", "--output_dir", str(output_dir), *RUN, *extra]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    process.log_path = Path(log.name)
    log.close()
    return process


def pretrain_in_process(output_dir, *extra) -> Path:
    """The same run as the CLI's, in this process (one thread, as in the subprocesses); global torch settings are
    put back afterwards."""
    from ptum_hf.cli import parse

    (args,) = parse(PretrainingArguments, ["--output_dir", str(output_dir), *RUN, *extra])
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        return pretrain(args)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def wait_for(process, *paths, timeout=240) -> Path:
    """The first of `paths` to exist, polled every few milliseconds while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in paths:
            if path.exists():
                return path
        if process.poll() is not None:
            pytest.fail(
                f"run ended (rc {process.returncode}) before {paths[0].name} appeared:\n"
                f"{process.log_path.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.003)
    pytest.fail(f"{paths[0]} did not appear within {timeout}s")


def assert_same_weights(folder_a, folder_b):
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)}/{len(a)} tensors differ, e.g. {different[:3]}"


def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path, capsys):
    """Exact equality on CPU: one thread, `--deterministic true`, and the resumed run restores everything the
    remaining steps depend on (weights, AdamW moments, LR schedule, torch/numpy/python RNG states for dropout, the
    epoch's sampler order and position, the seeded collation, the tokenizer). No tolerance is needed."""
    # not the global `random`: the in-process runs of other tests seed it
    seed = int(os.environ.get("PTUM_RESILIENCE_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    mode = rng.choice(["random point after a checkpoint", "while a checkpoint is being written"])
    # after the first checkpoint: a kill inside the first write leaves nothing to resume (the run starts over)
    kill_after = rng.choice([4, 8, 12, 16, 20] if mode.startswith("random") else [8, 12, 16, 20])
    note = f"PTUM_RESILIENCE_SEED={seed}: kill {mode}, around step {kill_after}"
    print(note)

    victim_dir, reference_dir = tmp_path / "victim", tmp_path / "reference"
    victim = start_pretraining(victim_dir, log_name="killed.log")
    checkpoints = victim_dir / "checkpoints"
    if mode.startswith("random"):
        wait_for(victim, checkpoints / f"step_{kill_after}")
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        wait_for(victim, checkpoints / f".tmp-step_{kill_after}", checkpoints / f"step_{kill_after}")
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL

    # Nothing half-written is taken for a checkpoint; the model was never written.
    assert not (victim_dir / "model").exists()
    latest = resolve_checkpoint(victim_dir, "latest")
    assert latest is not None and CHECKPOINT_FILES <= {p.name for p in latest.iterdir()}
    killed_at = json.loads((latest / "progress.json").read_text())["step"]
    note += f"; resumed from step {killed_at}; folders: {sorted(p.name for p in checkpoints.iterdir())}"

    # The uninterrupted run (here, in this process) uses the victim's tokenizer; the resumed run must find that
    # tokenizer in the checkpoint by itself (a vocabulary trained again need not match across tokenizers versions).
    pretrain_in_process(reference_dir, "--tokenizer_name", str(victim_dir / "tokenizer"))
    capsys.readouterr()
    pretrain_in_process(victim_dir, "--resume_from_checkpoint", "latest")
    assert f"resumed from {latest} at step {killed_at}" in capsys.readouterr().out
    print(note)  # again: reading the captured output above took the first print with it

    assert_same_weights(victim_dir / "model", reference_dir / "model")
    metrics = json.loads((victim_dir / "model" / "pretraining_metrics.json").read_text())
    assert metrics == json.loads((reference_dir / "model" / "pretraining_metrics.json").read_text())
    assert metrics["step"] == TOTAL_STEPS
    # The loss curve: every step the victim logged, before the kill and after the resume (steps between the
    # checkpoint and the kill were run twice), has exactly the reference's loss.
    reference_losses, victim_losses = logged(reference_dir), logged(victim_dir)
    assert sorted(reference_losses) == sorted(victim_losses) == list(range(1, TOTAL_STEPS + 1))
    for step, values in victim_losses.items():
        assert set(values) == set(reference_losses[step]), f"step {step}: {values} vs {reference_losses[step]}"

    # Resuming from the checkpoint of the last step (a kill during the final save) trains nothing more.
    again = tmp_path / "again"
    shutil.copytree(victim_dir, again, ignore=shutil.ignore_patterns("model", "logs"))
    assert resolve_checkpoint(again, "latest").name == f"step_{TOTAL_STEPS}"
    final = pretrain_in_process(again, "--resume_from_checkpoint", "latest", "--report_to", "none")
    assert json.loads((final / "pretraining_metrics.json").read_text())["step"] == TOTAL_STEPS
    assert_same_weights(final, reference_dir / "model")


def test_latest_ignores_half_written_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"

    def make(name, complete=True):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.safetensors").write_bytes(b"weights")
        if complete:
            (folder / name / "progress.json").write_text(json.dumps({"step": 0, "epoch": 0, "step_in_epoch": 0}))

    assert resolve_checkpoint(tmp_path, "latest") is None
    make("step_2")
    make("step_10")
    make(".tmp-step_12")  # killed inside save_state, or before the rename (it may even hold progress.json)
    make("step_14", complete=False)  # written by something else, or a copy interrupted half-way
    make(".old-step_16")  # a re-save killed between its two renames
    make("step_x")
    make("checkpoint_20")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_10"]  # numeric order, not text order
    assert resolve_checkpoint(tmp_path, "latest") == folder / "step_10"
    assert resolve_checkpoint(tmp_path, None) is None
    assert resolve_checkpoint(tmp_path, str(folder / "step_2")) == folder / "step_2"
    with pytest.raises(FileNotFoundError, match="progress.json"):
        resolve_checkpoint(tmp_path, str(folder / "step_14"))


class Killed(BaseException):
    """Stands in for a kill inside the write (a real SIGKILL cannot be caught; see the subprocess test)."""


class FakeAccelerator:
    is_main_process = True

    def __init__(self, fail=False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        (Path(path) / "model.safetensors").write_bytes(b"weights")
        if self.fail:
            raise Killed()
        (Path(path) / "optimizer.bin").write_bytes(b"moments")


class FakeTokenizer:
    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "tokenizer.json").write_text("{}")


def test_checkpoint_write_interrupted_is_never_resumed(tmp_path):
    args = PretrainingArguments(output_dir=str(tmp_path), save_total_limit=2, report_to="none")
    save_checkpoint(FakeAccelerator(), args, step=4, epoch=0, step_in_epoch=4, tokenizer=FakeTokenizer())
    with pytest.raises(Killed):
        save_checkpoint(FakeAccelerator(fail=True), args, step=8, epoch=0, step_in_epoch=8, tokenizer=FakeTokenizer())
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-step_8", "step_4"]
    assert resolve_checkpoint(tmp_path, "latest") == folder / "step_4"
    assert {p.name for p in (folder / "step_4").iterdir()} == {
        "model.safetensors",
        "optimizer.bin",
        "tokenizer",
        "progress.json",
    }

    # The next save of that step replaces the leftover; older checkpoints beyond the limit go.
    for step in (8, 12):
        save_checkpoint(FakeAccelerator(), args, step=step, epoch=1, step_in_epoch=step - 12, tokenizer=FakeTokenizer())
    assert sorted(p.name for p in folder.iterdir()) == ["step_12", "step_8"]
    assert json.loads((resolve_checkpoint(tmp_path, "latest") / "progress.json").read_text())["step"] == 12

    # Saving a step again (a resumed run passing the same step) swaps the whole folder.
    (folder / "step_12" / "stale.txt").write_text("from the first attempt")
    save_checkpoint(FakeAccelerator(), args, step=12, epoch=1, step_in_epoch=0)
    assert not (folder / "step_12" / "stale.txt").exists() and (folder / "step_12" / "progress.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["step_12", "step_8"]


def test_model_save_interrupted_keeps_the_previous_model(tmp_path, monkeypatch):
    import ptum_hf.hub as hub

    config = PTUMConfig.from_preset("hsa", vocab_size=40, pad_token_id=0, **TINY)
    torch.manual_seed(0)
    first = PTUMForPretraining(config)
    folder = save_for_hub(first, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def write_half(model, staging, **kwargs):
        model.save_pretrained(staging)  # the weights land, then the kill
        raise Killed()

    monkeypatch.setattr(hub, "write_checkpoint", write_half)
    torch.manual_seed(1)
    with pytest.raises(Killed):
        save_for_hub(PTUMForPretraining(config), tmp_path / "model")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial folder under any name
