"""`BehaviorDataset`: users' behavior sequences, the behavior vocabulary, labels, an optional CTR task."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import numpy as np
import pyarrow as pa

from .report import IngestReport


@dataclass
class BehaviorDataset:
    """
    An ingested behavior log.

    Attributes:
        users (`datasets.Dataset`): one row per user: `user_id` (str), `behavior_ids` (list of int32, indices into
            `behaviors`), `timestamps` (list of int64 unix seconds, non-decreasing), then one int64 column per
            label (the class index into `label_classes[name]`; None when missing).
        behaviors (`list[str]`): the behavior vocabulary; a behavior's id is its index. Ad texts of the CTR task are
            in it too, after the behaviors of `users`.
        report (`IngestReport`): what was read, kept and dropped.
        ctr (`datasets.DatasetDict`, *optional*): the CTR task (`train`, `validation`, `test`), rows with
            `user_index` (row in `users`), `history_end` (how many of the user's behaviors precede the impression),
            `ad_title_id`, `ad_description_id` (-1 when none), `label` (0/1), `timestamp`.
        label_classes (`dict[str, list]`): for each label column, its classes in index order.
    """

    users: datasets.Dataset
    behaviors: list[str]
    report: IngestReport
    ctr: datasets.DatasetDict | None = None
    label_classes: dict[str, list] = field(default_factory=dict)
    _sequences: UserSequences | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def label_heads(self) -> dict[str, int]:
        """Label name -> number of classes, the form `PTUMConfig(label_heads=...)` takes."""
        return {name: len(classes) for name, classes in self.label_classes.items()}

    def sequences(self) -> UserSequences:
        """The users' behavior ids and times as flat numpy arrays (built once), for collators and samplers."""
        if self._sequences is None:
            self._sequences = UserSequences.from_dataset(self.users)
        return self._sequences

    def statistics(self) -> dict:
        """Counts for model cards and logs."""
        lengths = self.sequences().lengths
        stats = {
            "users": int(len(lengths)),
            "events": int(lengths.sum()),
            "unique_behaviors": len(self.behaviors),
            "mean_behaviors_per_user": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        }
        if self.label_classes:
            stats["labels"] = {name: len(classes) for name, classes in self.label_classes.items()}
        if self.ctr is not None:
            stats["ctr_impressions"] = {split: part.num_rows for split, part in self.ctr.items()}
        return stats

    def __repr__(self) -> str:
        ctr = {k: v.num_rows for k, v in self.ctr.items()} if self.ctr is not None else None
        return (
            f"BehaviorDataset(users={self.users.num_rows}, behaviors={len(self.behaviors)}, "
            f"events={self.report.events_kept}, labels={self.label_heads}, ctr={ctr})"
        )


@dataclass
class UserSequences:
    """
    All users' behaviors in a ragged layout: user i's behavior ids are `behavior_ids[offsets[i]:offsets[i + 1]]`,
    oldest first, with `timestamps` alongside. Picklable and cheap to slice.
    """

    behavior_ids: np.ndarray
    timestamps: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_dataset(cls, users: datasets.Dataset) -> UserSequences:
        """Read the `behavior_ids` and `timestamps` columns of `users` without a Python loop over rows."""
        table = arrow_columns(users, "behavior_ids", "timestamps")
        ids = table.column("behavior_ids").combine_chunks()
        times = table.column("timestamps").combine_chunks()
        lengths = pa.compute.list_value_length(ids).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            behavior_ids=ids.flatten().to_numpy().astype(np.int64),
            timestamps=times.flatten().to_numpy().astype(np.int64),
            offsets=offsets,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(behavior ids, timestamps) of user `index`."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.behavior_ids[start:end], self.timestamps[start:end]


def users_dataset(
    user_ids: list[str],
    offsets: np.ndarray,
    behavior_ids: np.ndarray,
    timestamps: np.ndarray,
    labels: dict[str, np.ndarray] | None = None,
) -> datasets.Dataset:
    """Build the `users` Dataset straight from flat arrays (no per-user Python lists). Labels: -1 = missing."""
    large = offsets[-1] >= 2**31 - 1
    offsets = pa.array(offsets, pa.int64() if large else pa.int32())
    list_type = pa.LargeListArray if large else pa.ListArray
    columns = {
        "user_id": pa.array(user_ids, pa.string()),
        "behavior_ids": list_type.from_arrays(offsets, pa.array(behavior_ids, pa.int32())),
        "timestamps": list_type.from_arrays(offsets, pa.array(timestamps, pa.int64())),
    }
    for name, values in (labels or {}).items():
        columns[name] = pa.array(values, pa.int64(), mask=np.asarray(values) < 0)
    return datasets.Dataset(pa.table(columns))


def arrow_columns(rows: datasets.Dataset, *names: str) -> pa.Table:
    """`names` columns of `rows` as one Arrow table (through any indices mapping), without a Python loop over rows."""
    missing = [name for name in names if name not in rows.column_names]
    if missing:
        raise KeyError(f"no column {missing} among {rows.column_names}")
    return rows.select_columns(list(names)).with_format("arrow")[:]


def columns(rows, *names: str) -> list[np.ndarray]:
    """`names` columns of `rows` (a `datasets.Dataset` or a mapping of sequences) as writable arrays. A Dataset is
    read through Arrow: since datasets 4, `np.asarray(dataset[name])` walks a lazy column row by row (seconds per
    100,000 rows)."""
    if not isinstance(rows, datasets.Dataset):
        return [np.asarray(rows[name]) for name in names]
    table = arrow_columns(rows, *names)
    arrays = []
    for name in names:
        column = table.column(name)
        if column.null_count:  # Arrow would turn them into NaN
            raise ValueError(f"column {name!r} has {column.null_count} missing values")
        arrays.append(np.array(column.to_numpy()))
    return arrays
