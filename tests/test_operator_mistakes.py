"""Nothing lost when operators make ordinary mistakes (issue 18).

1. One live run per output: a second `ptum-hf pretrain` / `finetune` / `embed` / `reproduce` on an output another
   live run holds stops at once, naming the holder; once the holder is killed (SIGKILL), the next run takes over.
2. No failure path leaves a temporary: a full disk (a small tmpfs) and a SIGKILL inside a save; the next write of the
   same target (or the run's start) removes what dead writers left, never what a live one is writing.
3. Exact resume or an error: a checkpoint whose random states do not load stops the resume, naming the file.
"""

import contextlib
import errno
import json
import os
import pickle
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ptum_hf.atomic import atomic_directory, atomic_file, host_key, remove_leftovers
from ptum_hf.locking import OutputInUseError, lock_path, output_lock, read_holder

from conftest import TINY, TINY_RUN, ddp_pretrain_command, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock, /proc, tmpfs")

# A tiny pre-training: 200 users, batches of 16; runs as long as --max_steps says.
RUN = [
    *TINY_RUN,
    "--report_to",
    "none",
    "--eval_steps",
    "100000",
    "--logging_steps",
    "100000",
    "--seed",
    "5",
]

# Takes a lock the way the commands do and sleeps (optionally after forking a child that outlives it). It loads
# ptum_hf/locking.py alone (standard library only), without the package's transformers import: a holder in a second.
HOLD = r"""
import importlib.util, os, sys, time
from pathlib import Path
package = importlib.util.find_spec("ptum_hf").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("ptum_hf_locking", os.path.join(package, "locking.py"))
locking = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locking)
output_lock = locking.output_lock
target, kind, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with output_lock(target, file=kind == "file"):
    if "--fork" in sys.argv:
        child = os.fork()
        if child == 0:
            time.sleep(300)
            os._exit(0)
        Path(str(ready) + ".child").write_text(str(child))
    ready.write_text(str(os.getpid()))
    time.sleep(300)
"""

# Starts a save and stays inside it (until killed) once `marker` exists.
SAVE = r"""
import json, sys, time
from pathlib import Path
mode, target, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if mode == "folder":
    from ptum_hf.configuration_ptum import PTUMConfig
    from ptum_hf.hub import save_for_hub
    from ptum_hf.modeling_ptum import PTUMForPretraining

    class SlowTokenizer:  # save_for_hub writes the weights, then the tokenizer: the kill lands between
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")
            marker.write_text("inside")
            time.sleep(300)

    config = PTUMConfig.from_preset("hsa", vocab_size=40, pad_token_id=0, **json.loads(sys.argv[4]))
    save_for_hub(PTUMForPretraining(config), target, tokenizer=SlowTokenizer())
else:  # what write_user_embeddings does: the output file's lock, then a temporary file
    from ptum_hf.atomic import atomic_file
    from ptum_hf.embedding import output_file_lock

    with output_file_lock(target), atomic_file(target) as tmp:
        tmp.write_bytes(b"PAR1 half a parquet file")
        marker.write_text("inside")
        time.sleep(300)
"""


def start(command, log_path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    process.log_path = Path(log_path)
    return process


def cli(*args, log_path) -> subprocess.Popen:
    return start([sys.executable, "-m", "ptum_hf.cli", *map(str, args)], log_path)


def script(tmp_path, source, *args, log_name) -> subprocess.Popen:
    path = tmp_path / f"{log_name}.py"
    path.write_text(source)
    return start([sys.executable, str(path), *map(str, args)], tmp_path / f"{log_name}.log")


def kill_tree(pid: int):
    """SIGKILL a process and every descendant: torchrun starts its ranks in sessions of their own, so killing the
    launcher's process group leaves them running."""
    pending, found = [pid], []
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            pending += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    for victim in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def output_of(process) -> str:
    return process.log_path.read_text(errors="replace")


def finish(process, timeout=300) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"still running after {timeout}s:\n{output_of(process)[-3000:]}")


def wait_until(condition, process, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"ended (rc {process.returncode}) before {what}:\n{output_of(process)[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.01)


def kill(process):
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def hold(tmp_path, target, kind="dir", *extra, name="holder") -> subprocess.Popen:
    ready = tmp_path / f"{name}.ready"
    holder = script(tmp_path, HOLD, target, kind, ready, *extra, log_name=name)
    wait_until(ready.exists, holder, "the lock")
    return holder


# 1. One live run per output ----------------------------------------------------------------------------------------


def test_second_pretrain_on_a_folder_stops_at_once_and_a_killed_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "pretrain"
    first = cli(
        "pretrain",
        "--output_dir",
        out,
        *RUN,
        "--max_steps",
        "100000",
        "--save_steps",
        "5",
        log_path=tmp_path / "first.log",
    )
    try:
        wait_until(lambda: (out / "checkpoints" / "step_5").exists(), first, "the first checkpoint")
        holder = read_holder(lock_path(out))
        assert holder["pid"] == first.pid and holder["command"].startswith("ptum-hf pretrain --output_dir")

        # The second run names the holder and stops before it reads any data (this dataset does not exist).
        second = cli(
            "pretrain",
            "--output_dir",
            out,
            *RUN,
            "--dataset",
            tmp_path / "missing.csv",
            log_path=tmp_path / "second.log",
        )
        assert finish(second) != 0
        output = output_of(second)
        assert f"{out} is in use by another ptum-hf run (pid {first.pid} on host " in output, output[-3000:]
        assert "choose another --output_dir" in output and "missing.csv" not in output
        assert first.poll() is None, "the first run must go on"
    finally:
        kill(first)
    assert first.returncode == -signal.SIGKILL

    # The kernel dropped the dead run's lock: the next run takes it over (its file still names the dead run).
    assert read_holder(lock_path(out))["pid"] == first.pid
    from ptum_hf.checkpointing import resolve_checkpoint

    latest = int(resolve_checkpoint(out, "latest").name[len("step_") :])
    resumed = cli(
        "pretrain",
        "--output_dir",
        out,
        *RUN,
        "--resume_from_checkpoint",
        "latest",
        "--max_steps",
        latest + 2,
        log_path=tmp_path / "resumed.log",
    )
    assert finish(resumed) == 0, output_of(resumed)[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{latest}'}" in output_of(resumed)
    assert (out / "model" / "config.json").exists()
    assert not lock_path(out).exists()  # a run that ends removes its lock file
    assert not [p for p in out.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]


def launch_ddp(output_dir, *extra, log_path) -> subprocess.Popen:
    """`ptum-hf pretrain` as two CPU processes, in its own process group."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ddp_pretrain_command(output_dir, *RUN, *extra),
            env=subprocess_env(ACCELERATE_USE_CPU="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log_path = Path(log_path)
    return process


def test_distributed_run_locks_once_and_a_second_one_stops_on_every_process(tmp_path):
    out = tmp_path / "pretrain"
    first = launch_ddp(out, "--max_steps", "100000", "--save_steps", "5", log_path=tmp_path / "first.log")
    try:
        wait_until(lambda: (out / "checkpoints" / "step_5").exists(), first, "the first checkpoint")
        holder = read_holder(lock_path(out))
        ranks = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
        assert str(holder["pid"]) in ranks and len(ranks) == 2  # one of the two processes holds it: rank 0

        # Both processes of the second launch stop (not only the one that tried the lock): no wait for a timeout.
        second = launch_ddp(out, "--max_steps", "10", log_path=tmp_path / "second.log")
        try:
            assert finish(second, timeout=240) != 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                kill_tree(second.pid)
        output = output_of(second)
        assert f"{out} is in use by another ptum-hf run (pid {holder['pid']} on host " in output, output[-3000:]
        # The lock's error, broadcast from rank 0: each of the two processes stops with it (no traceback).
        assert output.count(f"ptum-hf pretrain: {out} is in use by another ptum-hf run") == 2, output[-3000:]
        assert first.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            kill_tree(first.pid)
        first.wait()


def test_finetune_embed_and_reproduce_stop_at_once_on_a_held_output(tmp_path):
    finetune_dir, embeddings, work_dir = tmp_path / "finetune", tmp_path / "users.parquet", tmp_path / "work"
    holders = [
        hold(tmp_path, finetune_dir, name="finetune"),
        hold(tmp_path, embeddings, "file", name="embed"),
        hold(tmp_path, work_dir, name="reproduce"),
    ]
    try:
        missing = tmp_path / "no-such-model"  # loaded only after the lock: never reached
        runs = [
            cli(
                "finetune",
                "demographics",
                "--output_dir",
                finetune_dir,
                "--model_name_or_path",
                missing,
                log_path=tmp_path / "finetune-2.log",
            ),
            cli(
                "embed", "--model_name_or_path", missing, "--output_file", embeddings, log_path=tmp_path / "embed-2.log"
            ),
            cli(
                "reproduce",
                "--quick",
                "--output_dir",
                tmp_path / "results",
                "--work_dir",
                work_dir,
                log_path=tmp_path / "reproduce-2.log",
            ),
        ]
        expected = [
            (finetune_dir, "--output_dir"),
            (embeddings, "--output_file"),
            (work_dir, "--work_dir"),
        ]
        for run, holder, (target, flag) in zip(runs, holders, expected):
            assert finish(run) != 0
            output = output_of(run)
            assert f"{target} is in use by another ptum-hf run (pid {holder.pid} on host " in output, output[-3000:]
            assert f"choose another {flag}" in output and "no-such-model" not in output
        assert not (tmp_path / "results" / "runs.jsonl").exists()
    finally:
        for holder in holders:
            kill(holder)
    # The holders were killed: their locks are free again.
    for target, file in ((finetune_dir, False), (embeddings, True), (work_dir, False)):
        with output_lock(target, file=file):
            assert read_holder(lock_path(target, file))["pid"] == os.getpid()
        assert not lock_path(target, file).exists()


def test_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path):
    """DataLoader workers are forked: the lock goes with the process that took it, not with its last child."""
    holder = hold(tmp_path, tmp_path / "out", "dir", "--fork")
    child = int((tmp_path / "holder.ready.child").read_text())
    try:
        with pytest.raises(OutputInUseError, match=f"pid {holder.pid} "):
            with output_lock(tmp_path / "out"):
                pass
        kill(holder)
        assert Path(f"/proc/{child}").exists()  # the child still runs
        with output_lock(tmp_path / "out"):
            pass
    finally:
        kill(holder)
        os.kill(child, signal.SIGKILL)


def test_lock_is_reentrant_in_its_process_and_takes_over_a_stale_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    stale = {"pid": dead_pid(), "host": "h", "started": "2026-01-01T00:00:00", "command": "ptum-hf pretrain"}
    lock_path(folder).write_text(json.dumps(stale))  # left by a run killed with SIGKILL: not locked by anyone
    with output_lock(folder):
        assert read_holder(lock_path(folder))["pid"] == os.getpid()
        with output_lock(folder, "--work_dir"):  # e.g. reproduce with --work_dir equal to --output_dir
            pass
        assert lock_path(folder).exists()  # still held by the outer block
    assert not lock_path(folder).exists()


def test_in_use_message_names_the_holder(tmp_path):
    holder = hold(tmp_path, tmp_path / "out")
    try:
        with pytest.raises(OutputInUseError) as raised:
            with output_lock(tmp_path / "out", "--work_dir"):
                pass
    finally:
        kill(holder)
    record = json.loads((tmp_path / "out" / ".ptum-hf.lock").read_text())
    assert str(raised.value) == (
        f"{tmp_path / 'out'} is in use by another ptum-hf run (pid {holder.pid} on host {record['host']}, "
        f"started {record['started']}, `{record['command']}`); wait for it to finish or choose another --work_dir"
    )


# 2. No failure path leaves a temporary ---------------------------------------------------------------------------


def temporaries(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith((".tmp-", ".old-", ".model.tmp-")))


@pytest.fixture(scope="module")
def embedder():
    from ptum_hf.configuration_ptum import PTUMConfig
    from ptum_hf.data import BehaviorTokenCache, load_behavior_data, load_tokenizer
    from ptum_hf.modeling_ptum import PTUMModel

    data = load_behavior_data("synthetic", None, 300, 0)
    tokenizer = load_tokenizer(None, data, 300)
    torch.manual_seed(0)
    config = PTUMConfig.from_preset("hsa", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY)
    model = PTUMModel(config)
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, config.max_tokens_per_behavior)
    return model, data, cache


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder, leave=8192):
    """Take all but `leave` bytes of the file system holding `folder`."""
    stats = os.statvfs(folder)
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))


def assert_no_space(error: BaseException):
    # pyarrow raises OSError(ENOSPC); safetensors its own SafetensorError, whose text carries the OS error
    assert getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error), repr(error)


def test_full_disk_embeddings_fail_and_the_previous_file_stays(small_disk, embedder):
    from ptum_hf.embedding import write_user_embeddings

    model, data, cache = embedder
    target = small_disk / "users.parquet"
    write_user_embeddings(model, data, cache, target)
    before = target.read_bytes()
    fill(small_disk)
    with pytest.raises(OSError) as raised:
        write_user_embeddings(model, data, cache, target)
    assert_no_space(raised.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "users.parquet"]  # no temporary, no lock file


def test_full_disk_model_save_fails_and_the_previous_model_stays(small_disk):
    from ptum_hf.configuration_ptum import PTUMConfig
    from ptum_hf.hub import save_for_hub
    from ptum_hf.modeling_ptum import PTUMForPretraining

    config = PTUMConfig.from_preset("hsa", vocab_size=40, pad_token_id=0, **TINY)
    folder = save_for_hub(PTUMForPretraining(config), small_disk / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fill(small_disk)
    with pytest.raises(Exception) as raised:
        save_for_hub(PTUMForPretraining(config), small_disk / "model")
    assert_no_space(raised.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model"]


def test_model_save_killed_inside_then_saved_again_leaves_nothing(tmp_path):
    from ptum_hf.configuration_ptum import PTUMConfig
    from ptum_hf.hub import save_for_hub
    from ptum_hf.modeling_ptum import PTUMForPretraining

    config = PTUMConfig.from_preset("hsa", vocab_size=40, pad_token_id=0, **TINY)
    target = save_for_hub(PTUMForPretraining(config), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    marker = tmp_path / "inside"
    saver = script(tmp_path, SAVE, "folder", target, marker, json.dumps(TINY), log_name="saver")
    try:
        wait_until(marker.exists, saver, "the save")
    finally:
        kill(saver)
    left = temporaries(tmp_path)
    assert [name for name in left if f".p{saver.pid}-{host_key()}." in name] == left and len(left) == 1
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the previous model is untouched

    save_for_hub(PTUMForPretraining(config), target)
    assert temporaries(tmp_path) == []
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in target.iterdir()}


def test_embeddings_write_killed_inside_then_written_again_leaves_nothing(tmp_path, embedder):
    import pyarrow.parquet as pq

    from ptum_hf.embedding import write_user_embeddings

    model, data, cache = embedder
    target = tmp_path / "users.parquet"
    marker = tmp_path / "inside"
    writer = script(tmp_path, SAVE, "file", target, marker, log_name="writer")
    try:
        wait_until(marker.exists, writer, "the write")
    finally:
        kill(writer)
    assert len(temporaries(tmp_path)) == 1 and lock_path(target, file=True).exists()
    assert not target.exists()

    write_user_embeddings(model, data, cache, target)
    assert temporaries(tmp_path) == [] and not lock_path(target, file=True).exists()
    assert pq.read_table(target).num_rows == len(data.users)


def test_leftovers_of_dead_writers_go_and_a_live_writers_stay(tmp_path):
    dead, key = dead_pid(), host_key()
    live = subprocess.Popen(["sleep", "300"])
    try:
        names = {
            f".tmp-model.p{dead}-{key}.abcd1234": "dead writer: removed",
            f".tmp-model.p{live.pid}-{key}.abcd1234": "live writer: kept",
            f".tmp-model.p{dead}-00000000.abcd1234": "another machine's: kept",
            ".tmp-model.abcd1234": "no writer named: kept unless the caller holds the lock",
            f".tmp-report.md.p{dead}-{key}.x1y2z3w4": "another target's: kept when asked for model only",
            ".tmp-notes": "not ours: kept",
        }
        for name in names:
            (tmp_path / name).mkdir()
        (tmp_path / "model").mkdir()
        assert remove_leftovers(tmp_path, names={"model"}) == [f".tmp-model.p{dead}-{key}.abcd1234"]
        assert remove_leftovers(tmp_path) == [f".tmp-report.md.p{dead}-{key}.x1y2z3w4"]
        assert remove_leftovers(tmp_path, untagged=("model",)) == [".tmp-model.abcd1234"]
        assert temporaries(tmp_path) == sorted(
            [f".tmp-model.p{live.pid}-{key}.abcd1234", f".tmp-model.p{dead}-00000000.abcd1234", ".tmp-notes"]
        )
    finally:
        live.kill()
        live.wait()


def test_a_replacement_killed_between_its_renames_puts_the_previous_folder_back(tmp_path):
    dead, key = dead_pid(), host_key()
    old = tmp_path / f".old-model.p{dead}-{key}.abcd1234"
    (old / "model").mkdir(parents=True)
    (old / "model" / "config.json").write_text("previous")
    (tmp_path / f".tmp-model.p{dead}-{key}.efgh5678").mkdir()  # the new one, never renamed into place
    with atomic_directory(tmp_path / "model") as tmp:  # the next save of the same folder
        assert (tmp_path / "model" / "config.json").read_text() == "previous"  # put back before anything else
        (tmp / "config.json").write_text("new")
    assert (tmp_path / "model" / "config.json").read_text() == "new"
    assert temporaries(tmp_path) == []

    # with the target in place, an `.old-` copy is obsolete
    (old / "model").mkdir(parents=True)
    with atomic_file(tmp_path / "model" / "x.json") as tmp:
        tmp.write_text("{}")
    assert temporaries(tmp_path) == [old.name]  # another target's write does not touch it
    assert remove_leftovers(tmp_path, names={"model"}) == [old.name]
    assert (tmp_path / "model" / "config.json").read_text() == "new"


def test_run_start_removes_what_killed_runs_left(tmp_path):
    """Under the lock, the fixed `.tmp-step_N` of a killed distributed save and the unique names of earlier versions
    (e.g. a fine-tune killed in its final save: `.model.tmp-*`) go too."""
    from transformers import TrainingArguments

    from ptum_hf.checkpointing import remove_run_leftovers
    from ptum_hf.finetuning import output_dir_lock

    dead, key = dead_pid(), host_key()
    out = tmp_path / "pretrain"
    for name in (".tmp-step_8", f".old-step_4.p{dead}-{key}.abcd1234", ".tmp-step_x"):
        (out / "checkpoints" / name).mkdir(parents=True)
    (out / "checkpoints" / "step_4").mkdir()
    for name in (".tmp-model.abcd1234", f".tmp-tokenizer.p{dead}-{key}.abcd1234", ".tmp-data.abcd1234"):
        (out / name).mkdir()
    (out / "model").mkdir()
    (out / "model" / f".tmp-pretraining_metrics.json.p{dead}-{key}.abcd1234").write_text("{")
    with output_lock(out):
        remove_run_leftovers(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [".tmp-step_x", "step_4"]
    assert sorted(p.name for p in out.iterdir()) == [".tmp-data.abcd1234", "checkpoints", "model"]
    assert list((out / "model").iterdir()) == []

    finetune_dir = tmp_path / "finetune"
    for name in (".model.tmp-k2j4h5g6", f".tmp-model.p{dead}-{key}.abcd1234", "checkpoint-10"):
        (finetune_dir / name).mkdir(parents=True)
    with output_dir_lock(TrainingArguments(output_dir=str(finetune_dir), report_to="none")):
        assert sorted(p.name for p in finetune_dir.iterdir()) == [".ptum-hf.lock", "checkpoint-10"]
    assert sorted(p.name for p in finetune_dir.iterdir()) == ["checkpoint-10"]


def test_reproduce_start_removes_killed_workers_folders_but_not_a_live_ones(tmp_path):
    from ptum_hf.reproduce.main import lock_folders

    output_dir, work_dir = tmp_path / "results", tmp_path / "work"
    dead_worker, live_worker = work_dir / "finetune" / "current-11", work_dir / "finetune" / "current-12"
    for folder in (dead_worker, live_worker):
        (folder / "checkpoint-5").mkdir(parents=True)
    holder = hold(tmp_path, live_worker)  # a worker of a killed invocation, still fine-tuning there
    try:
        with contextlib.ExitStack() as stack:
            lock_folders(stack, output_dir, work_dir)
            assert not dead_worker.exists() and (live_worker / "checkpoint-5").exists()
            assert read_holder(lock_path(work_dir))["pid"] == os.getpid()
        assert not lock_path(work_dir).exists() and not lock_path(output_dir).exists()
    finally:
        kill(holder)


# 3. Exact resume or an error ------------------------------------------------------------------------------------


def pretrain_here(output_dir, *extra):
    from ptum_hf.cli import parse
    from ptum_hf.pretraining import PretrainingArguments, pretrain

    (args,) = parse(PretrainingArguments, ["--output_dir", str(output_dir), *RUN, "--num_users", "60", *extra])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain(args)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "pretrain"
    pretrain_here(out, "--max_steps", "4", "--save_steps", "2")
    return out


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def corrupt(path: Path, how: str, tmp_path):
    if how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "not a dict":
        torch.save([1, 2, 3], path)
    elif how == "not RNG states":
        torch.save(
            {"random_state": (3, (1, 2), None), "numpy_random_seed": 7, "torch_manual_seed": torch.zeros(4)}, path
        )
    elif how == "keys missing":
        torch.save({"step": 2}, path)
    elif how == "hostile":
        path.write_bytes(pickle.dumps(Hostile(tmp_path / "pwned"), protocol=2))


@pytest.mark.parametrize("how", ["garbage", "truncated", "not a dict", "not RNG states", "keys missing", "hostile"])
def test_resume_with_bad_random_states_stops_naming_the_file(finished_run, tmp_path, how):
    out = tmp_path / "pretrain"
    shutil.copytree(finished_run, out)
    states = out / "checkpoints" / "step_2" / "random_states_0.pkl"
    corrupt(states, how, tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"cannot resume: {states} is not a valid random-state file (")):
        pretrain_here(out, "--max_steps", "4", "--resume_from_checkpoint", str(states.parent))
    assert not (tmp_path / "pwned").exists()  # a pickle with code in it is refused, not run
    assert not lock_path(out).exists()


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "scheduler.bin", "model.safetensors"])
def test_resume_with_a_missing_state_file_stops_naming_it(finished_run, tmp_path, name):
    out = tmp_path / "pretrain"
    shutil.copytree(finished_run, out)
    checkpoint = out / "checkpoints" / "step_2"
    (checkpoint / name).unlink()
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"cannot resume from {checkpoint}: {checkpoint / name} missing")
    ):
        pretrain_here(out, "--max_steps", "4", "--resume_from_checkpoint", str(checkpoint))


def test_resume_with_damaged_weights_stops_naming_the_checkpoint(finished_run, tmp_path):
    out = tmp_path / "pretrain"
    shutil.copytree(finished_run, out)
    checkpoint = out / "checkpoints" / "step_4"
    (checkpoint / "optimizer.bin").write_bytes(b"not an optimizer")
    with pytest.raises(RuntimeError, match=re.escape(f"cannot resume from {checkpoint}: ")):
        pretrain_here(out, "--max_steps", "6", "--resume_from_checkpoint", "latest")


def test_resume_from_an_intact_checkpoint_restores_the_random_states(finished_run, tmp_path, capsys):
    out = tmp_path / "pretrain"
    shutil.copytree(finished_run, out)
    pretrain_here(out, "--max_steps", "4", "--resume_from_checkpoint", str(out / "checkpoints" / "step_2"))
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in capsys.readouterr().out


def test_random_states_that_load_state_did_not_restore_are_an_error(finished_run):
    from ptum_hf.checkpointing import check_rng_restored, load_rng_states

    path = finished_run / "checkpoints" / "step_2" / "random_states_0.pkl"
    states = load_rng_states(path)
    torch.set_rng_state(states["torch_manual_seed"])
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    check_rng_restored(states, path)  # all restored
    torch.rand(1)  # as if accelerate had not restored torch's state
    with pytest.raises(
        RuntimeError, match=re.escape(f"the random states of {path} (torch_manual_seed) were not restored")
    ):
        check_rng_restored(states, path)


def test_checkpoint_weights_have_the_mode_of_the_files_beside_them(finished_run):
    # safetensors writes 0600 whatever the umask; a checkpoint's files should all be readable alike.
    for step in sorted((finished_run / "checkpoints").iterdir()):
        expected = stat.S_IMODE((step / "progress.json").stat().st_mode)
        weights = list(step.glob("*.safetensors"))
        assert weights and {stat.S_IMODE(w.stat().st_mode) for w in weights} == {expected}, step
    model = finished_run / "model"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in model.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"]
