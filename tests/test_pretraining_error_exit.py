"""A two-process CPU run (`accelerate launch`, DDP over gloo) that fails after `accelerator.prepare` ends as a
successful one does: the DDP wrapper is released, then `end_training()` closes the trackers and destroys the process
group. A Reducer left holding the group's last reference destroys it with the GIL held and can deadlock at exit
(pytorch/pytorch#56297): the run must exit with its error instead, and no wrapper may be alive at that point."""

import os
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ddp_pretrain_command, subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="two CPU processes through torchrun")

# `ptum-hf pretrain`, counting the live DDP wrappers when the process group is destroyed.
WRAPPER = """import gc, sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from ptum_hf import cli
destroy = dist.destroy_process_group
def counted(*args, **kwargs):
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    print(f"DDP wrappers alive at destroy_process_group: {alive}", file=sys.stderr, flush=True)
    destroy(*args, **kwargs)
dist.destroy_process_group = counted
cli.main()
"""


def test_failing_ddp_run_exits_with_its_error(tmp_path):
    """A streamed log of one user: that user is held out for evaluation, so the training stream is empty in both
    processes and `_pretrain` raises after `prepare`."""
    texts = [f"item {i} in genre {i % 3}" for i in range(12)]
    pd.DataFrame({"user_id": "u0", "timestamp": range(12), "text": texts}).to_parquet(tmp_path / "log.parquet")
    flags = ["--dataset", tmp_path / "log.parquet", "--streaming", "--max_steps", "2", "--size", "tiny"]
    flags += ["--per_device_batch_size", "4", "--tokenizer_vocab_size", "100", "--report_to", "csv"]
    command = ddp_pretrain_command(tmp_path / "run", *flags)
    (tmp_path / "pretrain.py").write_text(WRAPPER)
    module = command.index("ptum_hf.cli")
    command[module - 1 : module + 1] = [str(tmp_path / "pretrain.py")]  # `-m ptum_hf.cli` -> the wrapper above

    env = subprocess_env(ACCELERATE_USE_CPU="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the launcher hung at exit for 120s:\n{stderr.decode(errors='replace')[-4000:]}")
    stderr = stderr.decode(errors="replace")
    assert process.returncode != 0 and "ended after 0 steps: it holds no training users" in stderr, stderr[-4000:]
    # Each process that got there (the launcher stops the other one as soon as one has failed).
    alive = re.findall(r"DDP wrappers alive at destroy_process_group: (\d+)", stderr)
    assert alive and set(alive) == {"0"}, stderr[-4000:]
