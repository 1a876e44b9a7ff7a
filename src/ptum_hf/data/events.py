"""Cleaning event rows and grouping them into per-user, time-ordered sequences (the rules of `ingest.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BehaviorLogError
from .readers import ROW, Source
from .report import IngestReport
from .timestamps import TimestampParseError, parse_timestamps

EVENT_COLUMNS = ("user_id", "timestamp", "text")
SOURCE = "_src"  # index of the record's file in the list of sources


def explode_user_rows(frame: pd.DataFrame, source: Source) -> pd.DataFrame:
    """
    Per-user rows (`text` and `timestamp` hold lists) -> one row per event. Lists of different lengths are refused.
    A frame without list values is returned as is.
    """
    texts = frame["text"]
    if texts.dtype != object or not texts.map(_is_list).any():
        return frame
    times = frame["timestamp"]
    for position, (text, time) in enumerate(zip(texts, times)):
        if not _is_list(text) or not _is_list(time) or len(text) != len(time):
            row = int(frame[ROW].iloc[position])
            raise source.error(
                "per-user rows need list values of equal length in 'text' and 'timestamp' "
                f"(got {_describe(text)} and {_describe(time)})",
                row=row,
                column="timestamp",
            )
    frame = frame.assign(text=texts.map(list), timestamp=times.map(list))
    return frame.explode(["text", "timestamp"], ignore_index=True).dropna(subset=["text", "timestamp"], how="all")


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _describe(value) -> str:
    return f"a list of {len(value)}" if _is_list(value) else repr(value)


def clean_events(
    frame: pd.DataFrame,
    sources: Sequence[Source],
    report: IngestReport,
    *,
    max_text_chars: int = 1000,
    timestamp_unit: str = "s",
    timestamp_format: str | None = None,
) -> pd.DataFrame:
    """
    Apply the row rules: normalise ids and texts, parse times, drop (and count) rows with a missing user, text or
    time, or a negative time; truncate long texts. Returns `user_id` (str), `timestamp` (int64), `text` (str) and
    the bookkeeping columns, in input order.
    """
    frame = frame.reset_index(drop=True)
    report.events_read += len(frame)
    users = normalise_ids(frame["user_id"])
    texts, too_long = _normalise_texts(frame["text"], max_text_chars)
    times, missing_time = _parse_times(frame, sources, timestamp_unit, timestamp_format)

    keep = users.notna().to_numpy().copy()
    report.drop_events("missing_user_id", (~keep).sum())
    bad = keep & texts.isna().to_numpy()
    report.drop_events("missing_text", bad.sum())
    keep &= ~bad
    bad = keep & missing_time
    report.drop_events("missing_timestamp", bad.sum())
    keep &= ~bad
    bad = keep & (times < 0)
    report.drop_events("negative_timestamp", bad.sum())
    keep &= ~bad

    texts = texts[keep]
    report.texts_truncated += int(too_long[keep].sum())
    extra = [c for c in frame.columns if c not in EVENT_COLUMNS]
    cleaned = frame.loc[keep, extra].copy()
    cleaned["user_id"] = users[keep].to_numpy(dtype=object)
    cleaned["timestamp"] = times[keep]
    cleaned["text"] = texts.to_numpy(dtype=object)
    return cleaned.reset_index(drop=True)


def seen_user_ids(frame: pd.DataFrame) -> set[str]:
    """The user ids named by raw rows (before any row is dropped), for the users-read count."""
    return set(normalise_ids(frame["user_id"]).dropna())


def normalise_ids(values: pd.Series) -> pd.Series:
    """Ids become stripped strings (integral numbers lose a trailing `.0`); empty or null -> None."""
    return _per_unique(values, _id_to_str)


def _id_to_str(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict, tuple, np.ndarray)):
        return repr(value)
    return str(value).strip() or None


def _normalise_texts(values: pd.Series, max_chars: int) -> tuple[pd.Series, np.ndarray]:
    """Whitespace runs (tabs, newlines) become one space, ends are stripped, empty -> None; texts longer than
    `max_chars` are cut. Returns the texts and which ones were cut."""
    texts = _per_unique(values, _text)
    lengths = _per_unique(texts, lambda t: 0 if t is None else len(t)).to_numpy(np.int64)
    too_long = lengths > max_chars
    if too_long.any():
        texts[too_long] = texts[too_long].map(lambda t: t[:max_chars].rstrip())
    return texts, too_long


def _text(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return " ".join(str(value).split()) or None


def _per_unique(values: pd.Series, function) -> pd.Series:
    """`function` applied once per distinct value (logs repeat their ids and texts), as an object Series."""
    values = pd.Series(values).reset_index(drop=True)
    if values.dtype == object and values.map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
        return values.map(function).astype(object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    done = np.array([function(v) for v in uniques] + [function(None)], dtype=object)
    return pd.Series(done[codes], dtype=object)


def _parse_times(frame, sources, unit, format) -> tuple[np.ndarray, np.ndarray]:
    try:
        return parse_timestamps(frame["timestamp"], unit=unit, format=format)
    except TimestampParseError as err:
        source = sources[int(frame[SOURCE].iloc[err.position])]
        raise source.error(str(err), row=int(frame[ROW].iloc[err.position]), column="timestamp") from None


@dataclass
class Sequences:
    """Events grouped by user: `order` indexes the cleaned frame (kept events, by user then time)."""

    user_ids: list[str]
    offsets: np.ndarray  # int64, one more than users
    order: np.ndarray  # int64, rows of the cleaned frame
    timestamps: np.ndarray  # int64, flat, aligned with `order`


def group_events(frame: pd.DataFrame, report: IngestReport, min_behaviors: int = 1) -> Sequences:
    """
    Apply the sequence rules to cleaned events: drop repeats of (user, time, text), order each user's events by time
    (ties keep input order), drop users with fewer than `min_behaviors` events. Users keep their order of first
    appearance. Counts go to `report`.
    """
    duplicate = frame.duplicated(["user_id", "timestamp", "text"]).to_numpy()
    report.drop_events("duplicate_event", duplicate.sum())
    rows = np.flatnonzero(~duplicate)
    codes, uniques = pd.factorize(frame["user_id"].to_numpy()[rows])
    times = frame["timestamp"].to_numpy(np.int64)[rows]

    counts = np.bincount(codes, minlength=len(uniques))
    short = counts < min_behaviors
    report.drop_users("too_few_behaviors", short.sum())
    report.drop_events("user_too_short", counts[short].sum())

    in_input_order = np.argsort(codes, kind="stable")
    same_user = codes[in_input_order][1:] == codes[in_input_order][:-1]
    went_back = same_user & (np.diff(times[in_input_order]) < 0)
    reordered = np.zeros(len(uniques), bool)
    reordered[codes[in_input_order][1:][went_back]] = True
    report.users_reordered += int((reordered & ~short).sum())

    order = np.lexsort((np.arange(len(rows)), times, codes))
    order = order[~short[codes[order]]]
    sorted_codes, sorted_times = codes[order], times[order]
    report.tied_timestamps += int(((sorted_codes[1:] == sorted_codes[:-1]) & (np.diff(sorted_times) == 0)).sum())

    kept_users = np.flatnonzero(~short)
    offsets = np.zeros(len(kept_users) + 1, np.int64)
    np.cumsum(counts[kept_users], out=offsets[1:])
    report.events_kept += len(order)
    report.users_kept += len(kept_users)
    return Sequences(
        user_ids=[str(u) for u in uniques[kept_users]],
        offsets=offsets,
        order=rows[order],
        timestamps=sorted_times,
    )


def refuse_if_empty(sequences: Sequences, report: IngestReport, files: Sequence[str]) -> None:
    if not sequences.user_ids:
        raise BehaviorLogError(
            f"no event was kept from {len(report.files)} file(s); {report.summary()}",
            path=files[0] if len(files) == 1 else None,
        )
