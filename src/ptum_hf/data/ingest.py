"""
Reading behavior logs into a `BehaviorDataset`.

Input: CSV, TSV, JSON lines or Parquet files (a path, a directory, a glob, or a list; `.gz` works for the text
formats) with columns `user_id`, `timestamp`, `text` (rename others with `column_map={"file name": "user_id"}`;
other columns are ignored). A row may also hold one whole user, with lists in `text` and `timestamp`.

Rules. Each bad input is either refused with a `BehaviorLogError` (a `ValueError`) naming the file, line (row for
Parquet) and column, or handled as below and counted in the `IngestReport`:

Refused:
    - an empty (or whitespace-only) file;
    - a missing column (the error lists the file's columns and the closest match), or two columns mapped to one name;
    - bytes that are not valid in `encoding` (default UTF-8; pass `encoding="latin-1"` for such files);
    - malformed CSV/JSON, a JSON line that is not an object, per-user list rows whose lists differ in length;
    - a CSV/TSV field longer than 16 MiB (`readers.MAX_FIELD_CHARS` characters), in the header or in any column;
      a file without a header line is refused as missing its columns (the error says the first line looks like data);
    - a Parquet `user_id` column whose type is not string or integer (float, bool, ...);
    - a timestamp that is neither missing nor parseable (e.g. "yesterday"), or infinite;
    - in a labels table: a repeated or missing user id, an id that is not a string or an integer, a NUL byte in an id
      or a label, or a value outside `label_classes` (unless `invalid_labels="missing"`);
    - a log from which no event is kept.
Handled and counted:
    - missing user id, text or timestamp (empty, null, NaN, "nan", "null", "NA"...): the event is dropped
      (`dropped_events["missing_user_id" | "missing_text" | "missing_timestamp"]`);
    - a user id that is neither a string nor an integer (in JSON: `1.0`, `true`, a list or an object): dropped
      (`"invalid_user_id"`), with a note naming the first one;
    - a NUL character (`\\x00`) in a user id or text: dropped (`"nul_byte"`), with a note naming the first one;
    - a timestamp before 1970-01-01 (negative): dropped (`"negative_timestamp"`); at or after 2100-01-01 (e.g. a
      time in milliseconds read as seconds, or a 9999-12-31 placeholder): dropped (`"timestamp_after_2100"`), with a
      note naming the first one and, for a number, the smaller `timestamp_unit` that would put it in range;
    - the same (user, time, text) again: the repeat is dropped (`"duplicate_event"`);
    - events not in time order: each user's events are sorted by time (`users_reordered`); events with the same
      time keep their input order (`tied_timestamps`), both are kept;
    - users with fewer than `min_behaviors` (default 1) events: dropped with their events (`dropped_users
      ["too_few_behaviors"]`, `dropped_events["user_too_short"]`); users of the labels table with no kept event are
      `dropped_users["no_events"]`. A user with 1 behavior is kept by default: the pre-training collator gives it
      no MBP/NBP target (label -100), the downstream collators use it normally;
    - text: whitespace runs (newlines, tabs) become one space and the ends are stripped; a text longer than
      `max_text_chars` (default 1000) is cut (`texts_truncated`) and kept;
    - labels: a user without a labels row or with an empty value has the label missing (`missing_labels`); the
      users of each class are counted too (`label_counts`), and `summary()` shows both per label.

Not data, not counted: a UTF-8 byte order mark at the start of a CSV/TSV/JSON lines file is skipped.

User ids: strings are stripped; integers are written in decimal, so JSON `1` and `"1"` (or a Parquet integer 1 and a
string "1") are the same user, while the strings "1" and "1.0" are two users.

Times: numbers are unix time in `timestamp_unit` (default seconds; fractions are floored; the unit is never guessed),
strings holding numbers too; other strings are dates parsed by pandas (ISO 8601, or `timestamp_format`); dates
without a zone are UTC. Stored as int64 unix seconds; kept only in [1970-01-01, 2100-01-01).

Vocabulary: `BehaviorDataset.behaviors` holds each distinct (normalised) text once, in order of first appearance
after sorting; `users["behavior_ids"]` index it. Users keep their order of first appearance in the input.
Labels: each label's values are stored as class indices into `label_classes[name]` (given, or the sorted distinct
values, numerically sorted when all are integers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .dataset import BehaviorDataset, users_dataset
from .events import (
    EVENT_COLUMNS,
    SOURCE,
    Sequences,
    clean_events,
    explode_user_rows,
    group_events,
    refuse_if_empty,
    seen_user_ids,
)
from .labels import encode_labels, read_labels
from .readers import Source, detect_format, iter_chunks, resolve_paths
from .report import IngestReport

PathLike = str | os.PathLike
Paths = PathLike | Sequence[PathLike]


def read_behavior_log(
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
) -> BehaviorDataset:
    """
    Read a behavior log into a `BehaviorDataset` (see the module docstring for the rules on bad input).

    Args:
        paths: a file, a directory, a glob pattern (`"logs/*.csv"`), or a list of them.
        column_map: file column name -> `user_id` | `timestamp` | `text` (its `user_id` entry also applies to the
            labels table).
        labels: a table (path or DataFrame) with `user_id` and label columns.
        label_columns: which label columns to use (default: all but `user_id`).
        label_classes: label name -> its classes, in index order; values outside them are refused.
        invalid_labels: `"raise"` (default) or `"missing"` for a label value outside `label_classes`.
        format: `csv`, `tsv`, `jsonl` or `parquet`; default: from each file's suffix.
        encoding: text encoding of CSV/TSV/JSON files.
        min_behaviors: users with fewer kept events are dropped.
        max_text_chars: longer texts are cut to this many characters.
        timestamp_unit / timestamp_format: how to read numeric / string times.

    Example:

    ```python
    >>> from ptum_hf.data import read_behavior_log
    >>> data = read_behavior_log("logs/*.csv", column_map={"uid": "user_id", "title": "text"})
    >>> data.users[0]["behavior_ids"], data.behaviors[:3], print(data.report.summary())
    ```
    """
    _check_column_map(column_map)
    files = resolve_paths(paths)
    sources = [Source(path, detect_format(path, format), encoding) for path in files]
    report = IngestReport(files=list(files))
    frames, raw_users = [], set()
    for index, source in enumerate(sources):
        for chunk in iter_chunks(source, EVENT_COLUMNS, column_map):
            report.rows_read += len(chunk)
            chunk = explode_user_rows(chunk, source)
            raw_users |= seen_user_ids(chunk)
            frames.append(chunk.assign(**{SOURCE: index}))
    frame = pd.concat(frames, ignore_index=True)
    events = clean_events(
        frame,
        sources,
        report,
        max_text_chars=max_text_chars,
        timestamp_unit=timestamp_unit,
        timestamp_format=timestamp_format,
    )
    label_map = {k: v for k, v in (column_map or {}).items() if v == "user_id"}
    table = read_labels(labels, label_map, label_columns, encoding) if labels is not None else None
    return group_and_build(
        events,
        report,
        min_behaviors=min_behaviors,
        raw_users=raw_users,
        labels=table,
        label_classes=label_classes,
        invalid_labels=invalid_labels,
    )[0]


def group_and_build(
    events: pd.DataFrame,
    report: IngestReport,
    *,
    min_behaviors: int = 1,
    raw_users: set[str] | None = None,
    labels=None,
    label_classes: dict[str, Sequence] | None = None,
    invalid_labels: str = "raise",
    extra_texts: Sequence[str] = (),
) -> tuple[BehaviorDataset, Sequences, dict[str, int]]:
    """
    Group cleaned events into a `BehaviorDataset`; `extra_texts` (ad texts) join the vocabulary after the behaviors.
    Also returns the `Sequences` (kept event order, for builders attaching per-event data) and each extra text's id.
    """
    if min_behaviors < 1:
        raise ValueError(f"min_behaviors must be >= 1, got {min_behaviors}")
    sequences = group_events(events, report, min_behaviors)
    known = set(raw_users if raw_users is not None else events["user_id"]) | set(labels.user_ids if labels else ())
    report.users_read += len(known)
    report.drop_users("no_events", len(known) - report.users_kept - sum(report.dropped_users.values()))
    refuse_if_empty(sequences, report, report.files)

    texts = events["text"].to_numpy(dtype=object)[sequences.order]
    codes, vocabulary = pd.factorize(np.concatenate([texts, np.asarray(list(extra_texts), dtype=object)]))
    behaviors = [str(t) for t in vocabulary]
    extra_ids = dict(zip(extra_texts, codes[len(texts) :].tolist()))

    encoded, classes = {}, {}
    if labels is not None:
        encoded, classes = encode_labels(labels, sequences.user_ids, report, label_classes, invalid_labels)
    users = users_dataset(sequences.user_ids, sequences.offsets, codes[: len(texts)], sequences.timestamps, encoded)
    report.check()
    dataset = BehaviorDataset(users=users, behaviors=behaviors, report=report, label_classes=classes)
    return dataset, sequences, extra_ids


def _check_column_map(column_map: dict | None) -> None:
    if column_map is None:
        return
    if not isinstance(column_map, dict):
        raise TypeError(f"column_map must be a dict of file column -> canonical name, got {type(column_map).__name__}")
    targets = set(EVENT_COLUMNS)
    wrong = {k: v for k, v in column_map.items() if v not in targets}
    if wrong:
        flipped = all(k in targets for k in wrong)
        hint = " (it maps file columns to canonical names: flip the pairs?)" if flipped else ""
        raise ValueError(f"column_map values must be one of {sorted(targets)}; got {wrong}{hint}")
