"""Running the plan: the records of finished runs, the jobs the experiments plan, the runner and its worker
processes, logging."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import load_behavior_data
from .settings import MOVIELENS, SYNTHETIC, Settings


class Records:
    """Append-only JSON lines per experiment; a record's key says which run it is, so finished runs are skipped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, experiment):
        return self.folder / f"{experiment}.jsonl"

    def load(self, experiment) -> list[dict]:
        path = self.path(experiment)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return rows

    def done(self, experiment) -> set:
        return {record_key(r) for r in self.load(experiment)}

    def add(self, experiment, record: dict):
        path = self.path(experiment)
        # A line cut by a kill has no newline: start on a new line, or this record would be glued to it and lost.
        cut = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                cut = handle.read(1) != b"\n"
        with open(path, "a") as handle:
            handle.write(("\n" if cut else "") + json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add_run(self, key: tuple, metrics: dict, seconds: float, **extra):
        """One run's metrics under its key (`KEY_FIELDS`' values), with any further fields."""
        self.add(key[0], {**dict(zip(KEY_FIELDS, key, strict=True)), "metrics": metrics, "seconds": seconds, **extra})


KEY_FIELDS = ("experiment", "task", "dataset", "preset", "setting", "variant", "ratio", "repeat")


def record_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY_FIELDS)


@dataclass(eq=False)
class Job:
    """One unit of work: `function(ctx, *args)` (in a worker process with `--jobs`; module-level, so it pickles),
    then `done(result, seconds)` in the main process. It starts only once `after` has finished. `settings`: those of
    the context that planned it (a cell's, `Context.for_cell`), which `ctx` carries while it runs."""

    experiment: str
    function: Callable
    args: tuple
    done: Callable
    after: Job | None = None
    finished: bool = False
    settings: Settings | None = None


class Context:
    def __init__(self, settings: Settings, output_dir: Path, work_dir: Path, quick: bool):
        self.settings = settings
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.quick = quick
        self.records = Records(output_dir / "raw")
        self._data = {}
        self.timings = {}
        self.pool = None  # worker processes for the jobs (--jobs > 1)
        self.workers = 1
        self.jobs: list[Job] = []  # planned by the experiments, run by `run_jobs`
        self.pretrainings: dict[Path, Job] = {}  # planned pre-trainings by folder, shared between grids
        self.cells: dict[str, Settings] = {}  # the settings each (task, dataset) planned with (`for_cell`)

    def plan(self, job: Job) -> Job:
        """Add `job` to the plan; it runs under this context's settings unless it names its own."""
        if job.settings is None:
            job.settings = self.settings
        self.jobs.append(job)
        return job

    def for_cell(self, task: str, dataset: str, measured: bool = True) -> Context:
        """This context (the same records, data and plan) with the settings of `task` on `dataset`
        (`Settings.for_cell`), which the jobs it plans run under."""
        settings = self.settings.for_cell(task, dataset, measured)
        self.cells[f"{task}/{dataset}" + ("" if measured else " (paper's)")] = settings
        return self.with_settings(settings)

    def with_settings(self, settings: Settings) -> Context:
        """This context with `settings` in place of its own."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def data(self, name: str, num_users: int | None = None):
        """A dataset by name, loaded once."""
        users = num_users or self.settings.synthetic_users
        key = (name, users if name == SYNTHETIC else None)
        if key not in self._data:
            self._data[key] = load_behavior_data(name, self.data_name_dir(name), users, self.settings.seed)
        return self._data[key]

    def data_name(self, name: str) -> str:
        """MovieLens is read from disk; --quick uses synthetic data in its place (no files needed)."""
        return SYNTHETIC if self.quick and name == MOVIELENS else name

    def data_name_dir(self, name):
        return self.settings.data_dir if name == MOVIELENS else None


def log(message: str):
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def quiet():
    """Silence transformers/accelerate chatter and progress bars during the many runs (errors still raise)."""
    import transformers

    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        transformers.logging.set_verbosity(old)


def run_jobs(ctx: Context, on_experiment_done=None):
    """Run every planned job, each once the job it waits on has finished: here in plan order, or in the `--jobs`
    worker processes, the first ready job in plan order whenever a worker is free (so pre-trainings run beside
    fine-tunes instead of before them). Only this process writes records (each job's `done`)."""
    jobs, ctx.jobs = ctx.jobs, []
    left = Counter(job.experiment for job in jobs)

    def finish(job, result, seconds):
        key = f"experiment {job.experiment} job seconds"  # the work, which overlaps other experiments' with --jobs
        ctx.timings[key] = round(ctx.timings.get(key, 0) + seconds, 1)
        job.done(result, seconds)
        job.finished = True
        left[job.experiment] -= 1
        if not left[job.experiment] and on_experiment_done:
            on_experiment_done(job.experiment)

    if ctx.pool is None:
        for job in jobs:
            finish(job, *_timed(job.function, ctx.with_settings(job.settings), *job.args))
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    running = {}  # at most one job per worker is submitted: on an error, `worker_pool` has nothing queued to cancel
    while jobs or running:
        while len(running) < ctx.workers:
            job = next((j for j in jobs if j.after is None or j.after.finished), None)
            if job is None:
                break
            jobs.remove(job)
            running[ctx.pool.submit(_worker_call, job.function, job.args, job.settings)] = job
        if not running:
            raise RuntimeError(f"{len(jobs)} planned jobs wait on jobs that were never planned")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            finish(running.pop(future), *future.result())


@contextlib.contextmanager
def worker_pool(ctx: Context, jobs: int, threads: int):
    """`ctx.pool`: `jobs` spawned processes with `threads // jobs` threads each (none for jobs=1)."""
    if jobs <= 1:
        yield
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    initargs = (ctx.settings, str(ctx.output_dir), str(ctx.work_dir), ctx.quick, max(1, threads // jobs))
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start, initargs=initargs
    )
    ctx.pool, ctx.workers = pool, jobs
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        ctx.pool, ctx.workers = None, 1
        pool.shutdown()


_WORKER = {}


def _worker_start(settings: Settings, output_dir: str, work_dir: str, quick: bool, threads: int):
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    _WORKER["ctx"] = Context(settings, Path(output_dir), Path(work_dir), quick)


def _worker_call(function, args, settings) -> tuple:
    return _timed(function, _WORKER["ctx"].with_settings(settings), *args)


def _timed(function, *args) -> tuple:
    start = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - start, 1)
