"""The run's checkpoints: saving a step's state, finding the one to resume, checking that it restores.

`save_checkpoint` writes a step's `accelerator.save_state` (with the tokenizer and the loop's position) under a
temporary name, then renames it to `checkpoints/step_N`: a run killed mid-write leaves no folder that resume would
pick, and `remove_run_leftovers` clears what it did leave. `resolve_checkpoint` finds the checkpoint to resume
(`latest`, or a folder); `check_checkpoint` checks, before anything is loaded, that its files are all there and its
random states load, and `check_rng_restored` that `load_state` restored them (Accelerate only logs a failure).
"""

import json
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_directory, remove_leftovers

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first. Half-written ones live under a temporary name and are never listed."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name) and (p / "progress.json").exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_checkpoint(output_dir, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / "progress.json").exists():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume}: no complete checkpoint there (progress.json missing)"
        )
    return path


def save_checkpoint(accelerator, args, step: int, epoch: int, step_in_epoch: int, tokenizer=None):
    """save_state into a temporary folder, then rename: a kill mid-write leaves nothing that resume would pick."""
    final = Path(args.output_dir) / "checkpoints" / f"step_{step}"
    with atomic_directory(final, accelerator) as tmp:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / "tokenizer"))
            progress = {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch}
            (tmp / "progress.json").write_text(json.dumps(progress))
            # safetensors creates its files 0600 whatever the umask: give them the mode of the files beside them.
            mode = (tmp / "progress.json").stat().st_mode & 0o777
            for weights in tmp.glob("*.safetensors"):
                weights.chmod(mode)
    if accelerator.is_main_process and args.save_total_limit > 0:
        for old in list_checkpoints(args.output_dir)[: -args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)


def remove_run_leftovers(output_dir) -> list[str]:
    """What killed runs left in `output_dir`: temporary checkpoint and model folders (call under its lock, before
    the run writes anything)."""
    output_dir = Path(output_dir)
    removed = remove_leftovers(output_dir, untagged=("model", "tokenizer"))
    removed += remove_leftovers(output_dir / "checkpoints", untagged=lambda name: bool(CHECKPOINT_PATTERN.match(name)))
    for folder in ("model", "logs"):
        removed += remove_leftovers(output_dir / folder)
    return removed


def rng_state_file(accelerator) -> str:
    """The file `save_state` writes this process's random states to."""
    from accelerate.utils.constants import RNG_STATE_NAME

    return f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"


def check_checkpoint(checkpoint: Path, accelerator) -> dict:
    """Before anything is loaded: the files `accelerator.load_state` reads for this process are all in `checkpoint`,
    and this process's random states load and are valid. Returns those states (`check_rng_restored` compares them
    after `load_state`, which only logs when it cannot restore them).

    Raises `FileNotFoundError` naming the missing files, or `ValueError` naming a random-state file that does not
    load (garbage, a pickle that is not an RNG state, or one with code in it: loaded with `weights_only=True`).
    """
    from accelerate.utils import DistributedType
    from accelerate.utils.constants import MODEL_NAME, OPTIMIZER_NAME, SAFE_WEIGHTS_NAME, SCALER_NAME, SCHEDULER_NAME

    checkpoint = Path(checkpoint)
    required = [checkpoint / rng_state_file(accelerator)]
    sharded = (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM)
    if accelerator.distributed_type not in sharded:  # those keep the model and optimizer in their own layout
        weights = checkpoint / SAFE_WEIGHTS_NAME
        if not weights.is_file() and (checkpoint / f"{MODEL_NAME}.bin").is_file():
            weights = checkpoint / f"{MODEL_NAME}.bin"
        required += [weights, checkpoint / f"{OPTIMIZER_NAME}.bin", checkpoint / f"{SCHEDULER_NAME}.bin"]
    if accelerator.scaler is not None:
        required.append(checkpoint / SCALER_NAME)
    missing = [str(path) for path in required if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot resume from {checkpoint}: {', '.join(missing)} missing")
    return load_rng_states(required[0])


RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def load_rng_states(path) -> dict:
    """The random states `save_state` wrote to `path`, loaded as `load_state` loads them, and checked: each one is
    accepted by a generator of its kind. Raises `ValueError` naming `path` otherwise."""
    from accelerate.utils import is_cuda_available
    from accelerate.utils import load as accelerate_load

    def refuse(why):
        return ValueError(
            f"cannot resume: {path} is not a valid random-state file ({why}); the run would not "
            "continue exactly. Resume from another checkpoint or start over"
        )

    try:
        states = accelerate_load(path)  # weights_only=True: a pickle that would run code is refused, not run
    except pickle.UnpicklingError as error:
        why = "it does not load with torch.load(weights_only=True): damaged, or not only tensors and plain values"
        raise refuse(why) from error
    except Exception as error:
        raise refuse(f"{type(error).__name__}: {str(error)[:300]}") from error
    if not isinstance(states, dict):
        raise refuse(f"it holds a {type(states).__name__}, not a dict of states")
    keys = RNG_KEYS + (("torch_cuda_manual_seed",) if is_cuda_available() else ())
    absent = [key for key in keys if key not in states]
    if absent == ["torch_cuda_manual_seed"]:
        raise refuse("it has no CUDA random states: saved where CUDA was not available")
    if absent:
        raise refuse(f"{', '.join(absent)} missing")
    try:
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        if is_cuda_available():
            cuda = states["torch_cuda_manual_seed"]
            if not isinstance(cuda, (list, tuple)) or not all(
                isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda
            ):
                raise TypeError("torch_cuda_manual_seed is not a list of byte tensors")
    except Exception as error:
        raise refuse(f"{type(error).__name__}: {error}") from error
    return states


def check_rng_restored(states: dict, path) -> None:
    """After `load_state`: the global generators hold the states of `path` (accelerate only logs a failure)."""
    from accelerate.utils import is_cuda_available

    numpy_now, numpy_saved = np.random.get_state(), states["numpy_random_seed"]
    restored = {
        "random_state": random.getstate() == tuple(states["random_state"]),
        "numpy_random_seed": numpy_now[0] == numpy_saved[0]
        and np.array_equal(numpy_now[1], numpy_saved[1])
        and tuple(numpy_now[2:]) == tuple(numpy_saved[2:]),
        "torch_manual_seed": torch.equal(torch.get_rng_state(), states["torch_manual_seed"]),
    }
    if is_cuda_available():
        restored["torch_cuda_manual_seed"] = all(
            torch.equal(now, saved.cpu())
            for now, saved in zip(torch.cuda.get_rng_state_all(), states["torch_cuda_manual_seed"])
        )
    failed = [key for key, ok in restored.items() if not ok]
    if failed:
        raise RuntimeError(f"cannot resume: the random states of {path} ({', '.join(failed)}) were not restored")
