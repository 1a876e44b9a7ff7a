"""The CTR task's layout and its time-based train/validation/test splits."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa

CTR_FEATURES = datasets.Features(
    {
        "user_index": datasets.Value("int64"),
        "history_end": datasets.Value("int64"),
        "ad_title_id": datasets.Value("int64"),
        "ad_description_id": datasets.Value("int64"),
        "label": datasets.Value("int64"),
        "timestamp": datasets.Value("int64"),
    }
)
SPLITS = ("train", "validation", "test")


def split_by_time(
    times: np.ndarray, users: np.ndarray | None = None, validation: float = 0.1, test: float = 0.1
) -> np.ndarray:
    """
    Split code of each impression (0 train, 1 validation, 2 test) by time: the latest `test` fraction is test and
    the `validation` fraction before it validation, counts rounded up (ties keep input order). With `users`, this
    is done within each user's impressions (a user with 1 impression has it in test, with 2: validation, test);
    without, over all impressions at once.
    """
    times = np.asarray(times, np.int64)
    groups = np.zeros(len(times), np.int64) if users is None else np.asarray(users, np.int64)
    order = np.lexsort((np.arange(len(times)), times, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(times)])
    size = np.repeat(sizes, sizes)
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(len(times))
    n_test = np.ceil(size * test - 1e-9).astype(np.int64)
    n_validation = np.minimum(size - n_test, np.ceil(size * validation - 1e-9).astype(np.int64))
    codes = np.zeros(len(times), np.int64)
    codes[order] = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_validation, 1, 0))
    return codes


def ctr_dataset_dict(columns: dict[str, np.ndarray], codes: np.ndarray) -> datasets.DatasetDict:
    """A `DatasetDict` (train/validation/test) of CTR rows, rows of each split in their input order."""
    splits = {}
    for code, name in enumerate(SPLITS):
        keep = codes == code
        table = pa.table({key: pa.array(np.asarray(columns[key], np.int64)[keep]) for key in CTR_FEATURES})
        splits[name] = datasets.Dataset(table)
    return datasets.DatasetDict(splits)


def history_ends(offsets: np.ndarray, timestamps: np.ndarray, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """How many of each user's behaviors are strictly before each impression time (vectorised binary search)."""
    # Shift each user's times into a disjoint band, so one searchsorted serves every user.
    base = timestamps.min(initial=0)
    span = int(max(timestamps.max(initial=0), times.max(initial=0)) - base) + 2
    if len(offsets) * span >= 2**62:
        raise OverflowError("time span too large for the vectorised search")
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    banded = owner * span + (timestamps - base)
    found = np.searchsorted(banded, users * span + (times - base), side="left")
    return found - offsets[users]
