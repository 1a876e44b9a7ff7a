"""One live run per output: an advisory lock that a command holds for its whole run.

`ptum-hf pretrain` and `finetune` lock their `--output_dir`, `embed` its `--output_file`, `reproduce` its `--work_dir`
and `--output_dir`. The lock is `fcntl.flock` on a hidden file (`<folder>/.ptum-hf.lock`, or `.<file name>.ptum-hf.lock`
beside an output file) whose text says who holds it: pid, host, start time and command. A second run on the same
output stops at once with an `OutputInUseError` naming the holder. The kernel drops the lock when its process ends, also
by SIGKILL, so a dead run's lock is taken over by the next run without anyone removing anything; a run that ends
removes the file.

Advisory: it keeps ptum-hf runs apart, not other programs. It relies on `flock`, which network file systems (NFS) may
not honour between machines; where the file system refuses it, the run warns and goes on without the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (nothing else in ptum-hf needs fcntl)
    fcntl = None

LOCK_NAME = ".ptum-hf.lock"


class OutputInUseError(RuntimeError):
    """Another live ptum-hf run holds the lock of this output."""


# lock file (real path) -> [fd, depth]: a process that holds a lock may take it again (nested commands, one folder
# given as two options); the lock goes when the outermost holder is done.
_held: dict[str, list] = {}
_guard = threading.Lock()


def _after_fork_in_child():
    """A forked child (e.g. a DataLoader worker) closes its copies of the lock fds without unlocking, so that the
    lock goes with the process that took it, not with the last of its children."""
    global _guard
    _guard = threading.Lock()
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def lock_path(target, file: bool = False) -> Path:
    """The lock file of an output folder, or (`file=True`) of an output file."""
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_NAME}" if file else target / LOCK_NAME


def read_holder(path) -> dict | None:
    """What the lock file `path` says of its holder (pid, host, started, command), or None."""
    try:
        text = Path(path).read_text()
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def output_lock(target, flag: str = "--output_dir", *, file: bool = False, main_process: bool = True, num_processes=1):
    """Hold the lock of the output folder `target` (or, with `file=True`, of the output file `target`) for the block.

    Raises `OutputInUseError`, naming the holder, when another live process holds it. In a distributed run pass
    `main_process` and `num_processes`: only the main process takes the lock, and every process raises when it
    could not (the error is broadcast, so that the others do not wait for a process that stopped).
    """
    key, error = None, None
    if main_process:
        try:
            key = _acquire(Path(target), lock_path(target, file), flag)
        except Exception as raised:  # shared with the other processes below, then raised
            error = raised
    if num_processes > 1:
        from accelerate.utils import broadcast_object_list

        sent = None if error is None else (isinstance(error, OutputInUseError), str(error))
        received = broadcast_object_list([sent], from_process=0)[0]
        if received is not None and error is None:
            in_use, message = received
            error = OutputInUseError(message) if in_use else RuntimeError(f"the main process could not lock: {message}")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if key is not None:
            _release(key)


def _acquire(target: Path, path: Path, flag: str) -> str | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return key
        if fcntl is None:
            return None
        for _ in range(100):  # retried only when the file was removed by a run that just ended
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _wait_for_holder(path)
                os.close(fd)
                raise OutputInUseError(_in_use_message(target, path, holder, flag)) from None
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    warnings.warn(
                        f"cannot lock {path} ({error.strerror}; network file systems may not support flock): "
                        f"running without the guard against a second run on {target}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    return None
                raise
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:  # locked a file that its holder removed on leaving: lock the one at `path` now
                os.close(fd)
                continue
            try:
                _write_holder(fd)
            except BaseException:  # e.g. a full disk: leave no lock file behind
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)
                raise
            _held[key] = [fd, 1]
            return key
        raise OutputInUseError(f"{target}: could not take the lock {path} (it keeps being replaced)")


def _release(key: str) -> None:
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        with contextlib.suppress(OSError):
            os.unlink(key)  # while still holding it: a run that opened this file sees it gone and retries
        os.close(fd)


def _write_holder(fd: int) -> None:
    command = shlex.join([_program(), *sys.argv[1:]])
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command if len(command) <= 500 else command[:497] + "...",
    }
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _program() -> str:
    """How the running command was started, as a user would type it."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    path = Path(program)
    if path.parent.name == "ptum_hf" and path.name == "cli.py":  # python -m ptum_hf.cli, accelerate launch
        return "ptum-hf"
    if path.parent.name == "reproduce" and path.name == "__main__.py":
        return "python -m ptum_hf.reproduce"
    return path.name


def _wait_for_holder(path: Path, seconds: float = 1.0) -> dict | None:
    """The holder's record; it writes it just after taking the lock, so wait a moment for it."""
    deadline = time.monotonic() + seconds
    while True:
        holder = read_holder(path)
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def _in_use_message(target: Path, path: Path, holder: dict | None, flag: str) -> str:
    if holder is None:
        who = f"its lock file {path} does not say which"
    else:
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}, "
            f"`{holder.get('command', '?')}`"
        )
    return f"{target} is in use by another ptum-hf run ({who}); wait for it to finish or choose another {flag}"
