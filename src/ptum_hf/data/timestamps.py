"""Turning timestamp columns (unix numbers or date strings) into int64 unix seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING_TOKENS = frozenset({"", "nan", "NaN", "NAN", "NaT", "nat", "null", "NULL", "None", "none", "NA", "N/A"})
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# The times an event may have: [1970-01-01, 2100-01-01) UTC, in unix seconds. Events outside are dropped and counted
# by `events.clean_events` (`negative_timestamp`, `timestamp_after_2100`): a year like 33658 is a time in
# milliseconds read as seconds, 9999-12-31 a "no date" placeholder, neither an event time.
MIN_SECONDS = 0
MAX_SECONDS = 4_102_444_800  # 2100-01-01T00:00:00Z
CLIP_SECONDS = 2**62  # finite numbers beyond +-this many seconds are clipped to it (still out of range, no overflow)


class TimestampParseError(ValueError):
    """A value that is neither missing nor a time; `position` is its index in the parsed array."""

    def __init__(self, value, position: int, hint: str):
        self.value = value
        self.position = position
        super().__init__(f"cannot parse {value!r} as a time ({hint})")


def parse_timestamps(values: pd.Series, unit: str = "s", format: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """
    Parse a column of times into (seconds, missing): int64 unix seconds (floored) and a bool mask of missing values.

    Numbers (or strings holding numbers) are unix times in `unit` (`s`, `ms`, `us`, `ns`); other strings are dates
    parsed by pandas with `format` (ISO 8601 when None). Naive dates are taken as UTC. Missing: None, NaN, and
    strings like "", "nan", "null", "NA". Anything else (including an infinite number) raises `TimestampParseError`.
    The unit is never guessed. Finite numbers too large for int64 seconds are clipped to +-`CLIP_SECONDS`, so that
    the caller's range rule (`MIN_SECONDS`, `MAX_SECONDS`) drops them like any other time out of range.
    """
    if unit not in UNITS:
        raise ValueError(f"timestamp_unit must be one of {', '.join(UNITS)}; got {unit!r}")
    values = pd.Series(values).reset_index(drop=True)
    seconds = np.zeros(len(values), dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        missing = values.isna().to_numpy()
        seconds[~missing] = _datetimes_to_seconds(values[~missing])
        return seconds, missing
    if pd.api.types.is_bool_dtype(values.dtype):
        raise TimestampParseError(values.iloc[0] if len(values) else True, 0, "a boolean column")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return _numbers_to_seconds(values.to_numpy(), unit, np.zeros(len(values), bool))
    stripped, missing = _strip_strings(values)
    numbers = pd.to_numeric(stripped.where(~missing), errors="coerce").to_numpy(dtype=float)
    is_number = ~np.isnan(numbers) & ~missing
    seconds, _ = _numbers_to_seconds(np.where(is_number, numbers, 0.0), unit, ~is_number)
    dates = ~missing & ~is_number
    if dates.any():
        texts = stripped[dates].astype(str)
        if format is None:
            parsed = pd.to_datetime(texts, format="ISO8601", utc=True, errors="coerce")
            hint = "expected unix seconds or an ISO 8601 date; pass timestamp_format for other layouts"
        else:
            parsed = pd.to_datetime(texts, format=format, utc=True, errors="coerce")
            hint = f"expected timestamp_format={format!r}"
        bad = parsed.isna().to_numpy()
        if bad.any():
            position = int(np.flatnonzero(dates)[np.argmax(bad)])
            raise TimestampParseError(values.iloc[position], position, hint)
        seconds[dates] = _datetimes_to_seconds(parsed)
    return seconds, missing


def _strip_strings(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Strings stripped, as an object Series, and the missing mask; refuses lists, dicts and booleans."""
    if values.dtype != object:  # a pandas string column (CSV/TSV): vectorised
        stripped = values.str.strip().astype(object)
        return stripped, (stripped.isna() | stripped.isin(MISSING_TOKENS)).to_numpy(bool)
    bad_type = values.map(lambda v: isinstance(v, (bool, list, dict, tuple, np.ndarray))).to_numpy(bool)
    if bad_type.any():
        position = int(np.argmax(bad_type))
        raise TimestampParseError(values.iloc[position], position, "not a number or a date string")
    stripped = values.map(lambda v: v.strip() if isinstance(v, str) else v)
    is_token = stripped.map(lambda v: isinstance(v, str) and v in MISSING_TOKENS).to_numpy(bool)
    return stripped, stripped.isna().to_numpy() | is_token


def _numbers_to_seconds(numbers: np.ndarray, unit: str, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if numbers.dtype.kind == "u":
        numbers = np.minimum(numbers, np.uint64(CLIP_SECONDS))  # above int64: would wrap around to negative
    if numbers.dtype.kind in "iu":
        return numbers.astype(np.int64) // UNITS[unit], missing
    numbers = numbers.astype(float)
    missing = missing | np.isnan(numbers)
    infinite = np.isinf(numbers) & ~missing
    if infinite.any():
        position = int(np.argmax(infinite))
        raise TimestampParseError(numbers[position], position, "infinite")
    finite = np.where(missing, 0.0, numbers)
    return np.floor(np.clip(finite / UNITS[unit], -CLIP_SECONDS, CLIP_SECONDS)).astype(np.int64), missing


def _datetimes_to_seconds(values: pd.Series) -> np.ndarray:
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert(None)
    return values.to_numpy().astype("datetime64[s]").astype(np.int64)
