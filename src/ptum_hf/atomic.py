"""Writes that never leave a half-written output: write under a temporary name beside the target, then rename.

Every file and folder ptum-hf writes goes through these helpers. A kill inside the block leaves at most a hidden
`.tmp-*` (or, between the two renames of a folder replacement, `.old-*`) name that nothing reads as a finished output;
an error inside the block removes it.

What a kill leaves is cleaned up later: a temporary's name says which process wrote it
(`.tmp-<name>.p<pid>-<host key>.<random>`, the host key standing for this machine and its process namespace), and the
next write of the same target, or a command's start under its lock (`remove_leftovers`), removes the temporaries of
writers that are no longer alive on this machine. A live writer's temporaries are never touched, nor those written
on another machine (their pid cannot be checked from here).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds, remove it otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, names={path.name})
    handle, name = tempfile.mkstemp(prefix=_temporary_prefix("tmp", path.name), dir=path.parent)
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
    save of the same name to replace (another process may still be writing into it), or for the run's start to remove
    (`remove_leftovers(..., untagged=...)` under the output folder's lock).
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    if accelerator is None:
        remove_leftovers(final.parent, names={final.name})
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix("tmp", final.name), dir=final.parent))
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
        remove_leftovers(final.parent, names={final.name})
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
    old = Path(tempfile.mkdtemp(prefix=_temporary_prefix("old", target.name), dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)  # if this fails too, `old` keeps the only copy: leave it
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


# Leftovers of killed writers ------------------------------------------------------------------------------------

# `.tmp-<name>.p<pid>-<host key>.<mkstemp's random part>` (or `.old-...`, a folder replacement's previous version)
_TAGGED = re.compile(r"^\.(?P<kind>tmp|old)-(?P<name>.+)\.p(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[a-z0-9_]+$")
# names without a writer: the accelerator path's fixed `.tmp-<name>`, and those of earlier ptum-hf versions
_FIXED = re.compile(r"^\.(?P<kind>tmp)-(?P<name>.+)$")
_UNIQUE = re.compile(r"^\.(?P<kind>tmp|old)-(?P<name>.+)\.[a-z0-9_]{8}$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp)-[A-Za-z0-9_]+$")


@functools.lru_cache(maxsize=1)
def host_key() -> str:
    """8 hex digits standing for this machine and this process namespace: where a pid can be checked from."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def writer_tag() -> str:
    """`p<pid>-<host key>`: which process writes a temporary (read by `remove_leftovers`)."""
    return f"p{os.getpid()}-{host_key()}"


def _temporary_prefix(kind: str, name: str) -> str:
    return f".{kind}-{name}.{writer_tag()}."


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (a zombie counts as alive, an unknown answer too)."""
    if pid <= 0:
        return True  # never ask about process groups
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, as another user's
        return True
    return True


def remove_leftovers(
    folder, names: Collection[str] | None = None, untagged: Collection[str] | Callable[[str], bool] = ()
) -> list[str]:
    """Remove from `folder` the temporaries that writers which are no longer alive left behind; returns their names.

    `names`: only the temporaries of these targets (default: of any target). A tagged temporary
    (`.tmp-<name>.p<pid>-<host>.*`) goes only when its writer ran on this machine and its pid is gone; a live
    process's, or one from another machine, stays. `untagged` (target names, or a test of a name) also removes the
    temporaries of those targets whose names do not say who wrote them (the accelerator path's fixed `.tmp-<name>`,
    the unique names of earlier versions): pass it only while holding the lock of the run that owns `folder`.

    A `.old-<name>.*` folder (a replacement killed between its two renames) is put back as `<name>` when `<name>` is
    missing (it is then the only copy of the previous output), and removed otherwise. Errors are ignored: cleaning up
    never fails a write.
    """
    folder = Path(folder)
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    keep_untagged = untagged if callable(untagged) else frozenset(untagged).__contains__
    found = []
    for entry in entries:
        parsed = _leftover(entry, keep_untagged)
        if parsed is not None and (names is None or parsed[1] in names):
            found.append((entry, *parsed))
    removed = []
    for entry, kind, name in sorted(found, key=lambda item: item[1] != "old"):  # put `.old-` copies back first
        try:
            if kind == "old":
                _settle_old(folder / entry, folder / name)
            else:
                _remove(folder / entry)
            removed.append(entry)
        except OSError:
            continue
    return removed


def _leftover(entry: str, untagged: Callable[[str], bool]) -> tuple[str, str] | None:
    """(kind, target name) when `entry` is a temporary that may be removed, else None."""
    tagged = _TAGGED.match(entry)
    if tagged:
        if tagged["host"] != host_key() or pid_alive(int(tagged["pid"])):
            return None
        return tagged["kind"], tagged["name"]
    for pattern in (_FIXED, _UNIQUE, _LEGACY):
        match = pattern.match(entry)
        if match and untagged(match["name"]):
            return match["kind"], match["name"]
    return None


def _settle_old(old: Path, target: Path) -> None:
    inner = old / target.name
    if not os.path.lexists(target) and os.path.lexists(inner):
        os.rename(inner, target)  # raises: `old` stays, it holds the only copy
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
