"""
Streaming a behavior log larger than memory as a `datasets.IterableDataset` of per-user rows.

Precondition: each user's events are contiguous within one file (the file is grouped by user, e.g. sorted by
`user_id`; order inside a user does not matter), or each row holds a whole user (lists in `text` and
`timestamp`). A user id that reappears after another user's events is refused with a `BehaviorLogError` naming the
line. Users are never merged across files, so the files can be sharded over DataLoader workers (one shard per
file).

Rows: `user_id`, `behavior_texts` (list of str: no global vocabulary exists, the collators tokenize texts per batch),
`timestamps` (list of int64), plus one int64 column per label (None when missing). The rules of
`read_behavior_log` apply unchanged (per user); what each file dropped is logged (logger `ptum_hf.data`) when the
file is done, since an `IterableDataset` has no report to return.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from .dataset import BehaviorDataset, users_dataset
from .events import EVENT_COLUMNS, SOURCE, clean_events, explode_user_rows, group_events, normalise_ids
from .ingest import PathLike, Paths, _check_column_map
from .iterable import iterable_from_tables, list_array
from .labels import encode_labels, read_labels
from .readers import ROW, Source, detect_format, iter_chunks, resolve_paths
from .report import IngestReport

logger = logging.getLogger("ptum_hf.data")


def stream_behavior_log(
    paths: Paths,
    column_map: dict[str, str] | None = None,
    labels: PathLike | pd.DataFrame | None = None,
    *,
    label_columns: Sequence[str] | None = None,
    label_classes: dict[str, Sequence] | None = None,
    invalid_labels: str = "raise",
    format: str | None = None,
    encoding: str = "utf-8",
    min_behaviors: int = 1,
    max_text_chars: int = 1000,
    timestamp_unit: str = "s",
    timestamp_format: str | None = None,
    chunk_size: int = 100_000,
) -> datasets.IterableDataset:
    """
    Like `read_behavior_log`, lazily: an `IterableDataset` of per-user rows read `chunk_size` events at a time (see
    the module docstring for the precondition). The labels table, if any, is read into memory.
    """
    _check_column_map(column_map)
    files = resolve_paths(paths)
    formats = [detect_format(path, format) for path in files]
    features = {
        "user_id": datasets.Value("string"),
        "behavior_texts": datasets.List(datasets.Value("string")),
        "timestamps": datasets.List(datasets.Value("int64")),
    }
    label_values = None
    if labels is not None:
        table = read_labels(
            labels, {k: v for k, v in (column_map or {}).items() if v == "user_id"}, label_columns, encoding
        )
        encoded, classes = encode_labels(table, table.user_ids, IngestReport(), label_classes, invalid_labels)
        label_values = {"names": list(encoded), "by_user": dict(zip(table.user_ids, zip(*encoded.values())))}
        features.update({name: datasets.Value("int64") for name in encoded})
    options = dict(
        column_map=column_map,
        encoding=encoding,
        min_behaviors=min_behaviors,
        max_text_chars=max_text_chars,
        timestamp_unit=timestamp_unit,
        timestamp_format=timestamp_format,
        chunk_size=chunk_size,
        labels=label_values,
    )
    features = datasets.Features(features)
    return iterable_from_tables(
        _generate,
        {"files": [list(pair) for pair in zip(files, formats)], "options": options, "features": features},
        features,
    )


def collect_users(rows: Iterable[dict]) -> BehaviorDataset:
    """Streamed rows (`user_id`, `behavior_texts`, `timestamps`) gathered into a `BehaviorDataset`, e.g. a sample
    of a stream to train a tokenizer on and hold evaluation users out of. Label columns are not kept."""
    rows = list(rows)
    if not rows:
        raise ValueError("the stream holds no users")
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(row["behavior_texts"]) for row in rows], out=offsets[1:])
    texts = np.fromiter(itertools.chain.from_iterable(r["behavior_texts"] for r in rows), object, int(offsets[-1]))
    times = np.fromiter(itertools.chain.from_iterable(r["timestamps"] for r in rows), np.int64, int(offsets[-1]))
    codes, behaviors = pd.factorize(texts)
    users = users_dataset([row["user_id"] for row in rows], offsets, codes, times)
    return BehaviorDataset(users=users, behaviors=list(behaviors), report=IngestReport(users_kept=len(rows)))


def _generate(files: list[list[str]], options: dict, features: datasets.Features):
    for path, format in files:
        for table in iter_file_users(Source(path, format, options["encoding"]), **options):
            yield table.cast(features.arrow_schema)


def iter_file_users(
    source: Source,
    column_map=None,
    encoding="utf-8",
    min_behaviors=1,
    max_text_chars=1000,
    timestamp_unit="s",
    timestamp_format=None,
    chunk_size=100_000,
    labels=None,
):
    """Arrow tables of per-user rows of one file (grouped by user), with the ingestion rules; logs the file's report
    at the end."""
    report = IngestReport(files=[source.path])
    seen: set[str] = set()
    pending, last = None, None  # the last user of a chunk may go on in the next one
    for chunk in iter_chunks(source, EVENT_COLUMNS, column_map, chunk_size):
        report.rows_read += len(chunk)
        chunk = explode_user_rows(chunk, source).assign(**{SOURCE: 0})
        users = normalise_ids(chunk["user_id"])
        _check_grouped(source, chunk, users, seen, last)
        events = clean_events(
            chunk,
            [source],
            report,
            max_text_chars=max_text_chars,
            timestamp_unit=timestamp_unit,
            timestamp_format=timestamp_format,
        )
        if pending is not None:
            events = pd.concat([pending, events], ignore_index=True)
        last = _last_user(users) or last
        done = events["user_id"].to_numpy() != last if last is not None else np.ones(len(events), bool)
        pending = events[~done].reset_index(drop=True)
        yield from _rows(events[done].reset_index(drop=True), report, min_behaviors, labels)
    if pending is not None and len(pending):
        yield from _rows(pending, report, min_behaviors, labels)
    report.users_read = len(seen)
    report.drop_users("no_events", len(seen) - report.users_kept - sum(report.dropped_users.values()))
    level = logging.WARNING if report.dropped_events or report.dropped_users else logging.INFO
    logger.log(level, "%s:\n%s", source.path, report.summary())


def _last_user(users: pd.Series):
    present = users.dropna()
    return present.iloc[-1] if len(present) else None


def _check_grouped(source: Source, chunk: pd.DataFrame, users: pd.Series, seen: set, last) -> None:
    """Refuse a user whose events resume after another user's (the streaming precondition)."""
    present = users.dropna()
    values = present.to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.zeros(0, int)
    for position in starts:
        user = values[position]
        if user in seen and not (position == 0 and user == last):
            row = int(chunk[ROW].iloc[present.index[position]])  # normalise_ids numbers rows from 0
            raise source.error(
                f"user {user!r} appears again after other users; streaming needs each user's events together "
                "(sort the file by user_id, or use read_behavior_log)",
                row=row,
                column="user_id",
            )
        seen.add(user)


def _rows(events: pd.DataFrame, report: IngestReport, min_behaviors: int, labels: dict | None):
    """One Arrow table of the users whose events are all in `events`."""
    if not len(events):
        return
    sequences = group_events(events, report, min_behaviors)
    if not sequences.user_ids:
        return
    texts = events["text"].to_numpy(dtype=object)[sequences.order]
    columns = {
        "user_id": pa.array(sequences.user_ids, pa.string()),
        "behavior_texts": list_array(sequences.offsets, pa.array(texts, pa.string())),
        "timestamps": list_array(sequences.offsets, pa.array(sequences.timestamps, pa.int64())),
    }
    if labels:
        missing = (-1,) * len(labels["names"])
        values = np.array([labels["by_user"].get(user, missing) for user in sequences.user_ids], np.int64)
        values = values.reshape(len(sequences.user_ids), len(labels["names"]))
        for column, name in enumerate(labels["names"]):
            columns[name] = pa.array(values[:, column], pa.int64(), mask=values[:, column] < 0)
    yield pa.table(columns)
