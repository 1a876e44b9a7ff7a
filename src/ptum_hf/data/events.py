"""Cleaning event rows and grouping them into per-user, time-ordered sequences (the rules of `ingest.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BehaviorLogError
from .readers import ROW, Source
from .report import IngestReport
from .timestamps import MAX_SECONDS, MIN_SECONDS, UNITS, TimestampParseError, parse_timestamps

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
    Apply the row rules: normalise ids and texts, parse times, drop (and count) rows with a missing or invalid user
    id, a missing text, a NUL byte in the id or text, a missing time, or a time outside [1970-01-01, 2100-01-01);
    truncate long texts. Returns `user_id` (str), `timestamp` (int64), `text` (str) and the bookkeeping columns, in
    input order.
    """
    frame = frame.reset_index(drop=True)
    report.events_read += len(frame)
    users, id_problems = classify_ids(frame["user_id"])
    texts, too_long, text_nul = _normalise_texts(frame["text"], max_text_chars)
    times, missing_time = _parse_times(frame, sources, timestamp_unit, timestamp_format)
    id_problems = id_problems.to_numpy()

    # One reason per dropped event: the first rule it breaks, in this order.
    keep = np.ones(len(frame), bool)
    for reason, broken in (
        ("missing_user_id", id_problems == "missing_user_id"),
        ("invalid_user_id", id_problems == "invalid_user_id"),
        ("nul_byte", id_problems == "nul_byte"),
        ("missing_text", texts.isna().to_numpy()),
        ("nul_byte", text_nul),
        ("missing_timestamp", missing_time),
        ("negative_timestamp", times < MIN_SECONDS),
        ("timestamp_after_2100", times >= MAX_SECONDS),
    ):
        bad = keep & broken
        if bad.any():
            report.drop_events(reason, bad.sum())
            _note_first(report, reason, frame, sources, int(np.argmax(bad)), times, timestamp_unit)
        keep &= ~bad

    texts = texts[keep]
    report.texts_truncated += int(too_long[keep].sum())
    extra = [c for c in frame.columns if c not in EVENT_COLUMNS]
    cleaned = frame.loc[keep, extra].copy()
    cleaned["user_id"] = users[keep].to_numpy(dtype=object)
    cleaned["timestamp"] = times[keep]
    cleaned["text"] = texts.to_numpy(dtype=object)
    return cleaned.reset_index(drop=True)


def _note_first(report: IngestReport, reason: str, frame, sources, position: int, times, unit: str) -> None:
    """Once per report, say where the first event dropped for one of the rules added for odd input was, and why."""
    if reason not in ("invalid_user_id", "nul_byte", "timestamp_after_2100"):
        return
    if any(note.startswith(f"{reason}:") for note in report.notes):
        return
    source = sources[int(frame[SOURCE].iloc[position])] if SOURCE in frame else None
    where = ""
    if source is not None and ROW in frame:
        number, kind = source.locate(int(frame[ROW].iloc[position]))
        where = f" (first: {source.path}, {kind} {number})"
    if reason == "invalid_user_id":
        value = frame["user_id"].iloc[position]
        note = (
            f"user ids that are neither a string nor an integer were dropped{where}, e.g. {_short(value)} of type "
            f"{type(value).__name__}; write ids as strings or integers"
        )
    elif reason == "nul_byte":
        note = f"events with a NUL byte (\\x00) in the user id or text were dropped{where}"
    else:
        raw = frame["timestamp"].iloc[position]
        note = f"events with a time at or after 2100-01-01 were dropped{where}, e.g. {_short(raw)}"
        note += _unit_hint(raw, int(times[position]), unit)
    report.notes.append(f"{reason}: {note}")


def _unit_hint(raw, seconds: int, unit: str) -> str:
    """For a number that is too far in the future: the smaller unit that brings it before 2100, if any."""
    if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, float, str, np.integer, np.floating)):
        return ""
    try:
        float(raw)
    except ValueError:
        return ""  # a date string: no unit to suggest
    for name, factor in sorted(UNITS.items(), key=lambda item: item[1]):
        if factor > UNITS[unit]:
            scaled = seconds * UNITS[unit] // factor
            if MIN_SECONDS <= scaled < MAX_SECONDS:
                day = np.datetime64(scaled, "s").astype("datetime64[D]")
                return f"; read with timestamp_unit={name!r} it would be {day}: is that the file's unit?"
    return ""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


def seen_user_ids(frame: pd.DataFrame) -> set[str]:
    """The user ids named by raw rows (before any row is dropped), for the users-read count. A missing or invalid
    id (see `classify_ids`) names no user."""
    return set(normalise_ids(frame["user_id"]).dropna())


def normalise_ids(values: pd.Series) -> pd.Series:
    """Ids as stripped strings; None where the row has no usable id (see `classify_ids`)."""
    return classify_ids(values)[0]


def classify_ids(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """
    (ids, problems), both object Series aligned with `values`. An id is a string (stripped) or an integer (written
    in decimal: integer `1` and string `"1"` are the same user). `problems` is None for a usable id, else the reason
    to drop its row: `missing_user_id` (None, NaN, empty or blank string), `invalid_user_id` (any other type: float,
    bool, list, dict...: `1.0` or `true` must not quietly become the ids "1" or "True") or `nul_byte` (the string
    holds a NUL character). `ids` is None wherever `problems` is not.
    """
    ids, problems = _per_unique(values, _classify_id, outputs=2)
    return ids, problems


def _classify_id(value) -> tuple[str | None, str | None]:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None, "missing_user_id"
    if isinstance(value, (bool, np.bool_)):
        return None, "invalid_user_id"
    if isinstance(value, (int, np.integer)):
        return str(int(value)), None
    if not isinstance(value, str):
        return None, "invalid_user_id"
    value = value.strip()
    if not value:
        return None, "missing_user_id"
    if "\x00" in value:
        return None, "nul_byte"
    return value, None


def _normalise_texts(values: pd.Series, max_chars: int) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Whitespace runs (tabs, newlines) become one space, ends are stripped, empty -> None; texts longer than
    `max_chars` are cut. Returns the texts, which ones were cut, and which ones hold a NUL character."""
    texts, lengths, nul = _per_unique(values, _text, outputs=3)
    lengths = lengths.to_numpy(np.int64)
    too_long = lengths > max_chars
    if too_long.any():
        texts[too_long] = texts[too_long].map(lambda t: t[:max_chars].rstrip())
    return texts, too_long, nul.to_numpy(bool)


def _text(value) -> tuple[str | None, int, bool]:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None, 0, False
    text = " ".join(str(value).split()) or None
    return text, 0 if text is None else len(text), text is not None and "\x00" in text


def _per_unique(values: pd.Series, function, outputs: int = 1):
    """
    `function` applied once per distinct value (logs repeat their ids and texts): an object Series, or a tuple of
    `outputs` Series when `function` returns that many values. Values of different types stay apart (pandas would
    count `1`, `1.0` and `True` as one value).
    """
    values = pd.Series(values).reset_index(drop=True)
    if values.dtype == object and _mixed_types(values):
        codes, uniques = _factorize_by_type(values.to_numpy())
    else:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = [function(v) for v in uniques] + [function(None)]  # code -1 (missing) picks the last
    columns = [table] if outputs == 1 else list(zip(*table))
    series = []
    for column in columns:
        array = np.empty(len(column), dtype=object)
        array[:] = list(column)
        series.append(pd.Series(array[codes], dtype=object))
    return series[0] if outputs == 1 else tuple(series)


def _mixed_types(values: pd.Series) -> bool:
    """Whether pandas' factorize could merge values of different types (`1`, `1.0`, `True`) or cannot hash them."""
    kinds = set(map(type, values.to_numpy())) - {str, type(None)}
    return len(kinds) > 1 or any(kind.__hash__ is None for kind in kinds)


def _factorize_by_type(values: np.ndarray) -> tuple[np.ndarray, list]:
    """Like `pd.factorize`, with (type, value) as the key; unhashable values (lists, dicts) each get their own code."""
    index, uniques = {}, []
    codes = np.empty(len(values), np.int64)
    for position, value in enumerate(values):
        try:
            key = (type(value), value)
            code = index.get(key)
        except TypeError:  # not hashable
            key = code = None
        if code is None:
            code = len(uniques)
            uniques.append(value)
            if key is not None:
                index[key] = code
        codes[position] = code
    return codes, uniques


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
