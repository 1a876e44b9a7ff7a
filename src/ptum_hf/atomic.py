"""Writes that never leave a half-written output: write under a temporary name beside the target, then rename.

Every file and folder ptum-hf writes goes through these helpers. A kill inside the block leaves at most a hidden
`.tmp-*` name that nothing reads as a finished output; an error inside the block removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds, remove it otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str):
    """Write a text file under a temporary name, then rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final, accelerator=None):
    """Yield a temporary folder beside `final`; put it in place of `final` (replacing a previous one as a whole) only
    when the block finished.

    Alone, the folder has a unique name and is removed if the block raises. With an accelerator, every process writes
    into the same `.tmp-<name>` folder and the main process renames it; a failed block leaves that folder for the next
    save of the same name to replace (another process may still be writing into it).
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    if accelerator is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}.", dir=final.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output folder is not
        try:
            yield tmp
            _replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp = final.parent / f".tmp-{final.name}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed run
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    yield tmp
    accelerator.wait_for_everyone()
    if main:
        _replace(tmp, final)
    accelerator.wait_for_everyone()


def _replace(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing `target` if it exists, with renames only; on a failure
    the previous `target` is put back."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}.", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)  # if this fails too, `old` keeps the only copy: leave it
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
