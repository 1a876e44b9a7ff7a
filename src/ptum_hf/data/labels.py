"""Reading a labels table (user_id + label columns) and encoding its values as class indices."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .events import classify_ids
from .readers import ROW, Source, detect_format, iter_chunks
from .report import IngestReport


@dataclass
class LabelTable:
    """A labels table: raw label values (one column per label, plus `_row`), row i belonging to `user_ids[i]`."""

    source: Source
    user_ids: list[str]
    raw: pd.DataFrame  # one column per label, raw values, plus `_row`


def read_labels(
    labels: str | os.PathLike | pd.DataFrame,
    column_map: dict | None = None,
    label_columns: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> LabelTable:
    """Read a labels table (path in any supported format, or a DataFrame); refuses a missing, repeated or invalid
    user id (not a string or an integer, or holding a NUL byte): a labels row cannot be dropped without a word."""
    if isinstance(labels, pd.DataFrame):
        source = Source("<labels DataFrame>", "frame")
        frame = labels.rename(columns={k: v for k, v in (column_map or {}).items() if k in labels.columns})
        frame = frame.reset_index(drop=True).assign(**{ROW: np.arange(len(labels))})
        missing = [c for c in ["user_id", *(label_columns or [])] if c not in frame.columns]
        if missing:
            raise source.error(f"missing column(s) {missing}; the table has {list(labels.columns)}")
    else:
        path = os.fspath(labels)
        source = Source(path, detect_format(path), encoding)
        columns = None if label_columns is None else ["user_id", *label_columns]
        required = ["user_id", *(label_columns or [])]
        frame = pd.concat(list(iter_chunks(source, columns, column_map, required=required)), ignore_index=True)
    names = (
        list(label_columns) if label_columns is not None else [c for c in frame.columns if c not in ("user_id", ROW)]
    )
    if not names:
        raise source.error("the labels table has no label column besides 'user_id'")
    user_ids, problems = classify_ids(frame["user_id"])
    if problems.notna().any():
        position = int(np.argmax(problems.notna().to_numpy()))
        value = frame["user_id"].iloc[position]
        message = {
            "missing_user_id": "missing user id",
            "invalid_user_id": f"user id {value!r} of type {type(value).__name__} is not a string or an integer",
            "nul_byte": "the user id holds a NUL byte (\\x00)",
        }[problems.iloc[position]]
        raise source.error(message, row=int(frame[ROW].iloc[position]), column="user_id")
    repeated = user_ids.duplicated().to_numpy()
    if repeated.any():
        position = int(np.argmax(repeated))
        raise source.error(
            f"user {user_ids.iloc[position]!r} has a second labels row",
            row=int(frame[ROW].iloc[position]),
            column="user_id",
        )
    return LabelTable(source, list(user_ids), frame[names + [ROW]].reset_index(drop=True))


def encode_labels(
    table: LabelTable,
    user_ids: Sequence[str],
    report: IngestReport,
    label_classes: dict[str, Sequence] | None = None,
    invalid_labels: str = "raise",
) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """
    Class index of every label for each of `user_ids` (-1 when missing) and the classes of every label.

    A label's classes are `label_classes[name]` when given (a value outside them raises, or with
    `invalid_labels="missing"` becomes missing and is counted), else its sorted distinct values (numerically when
    they are all integers).
    """
    if invalid_labels not in ("raise", "missing"):
        raise ValueError(f"invalid_labels must be 'raise' or 'missing'; got {invalid_labels!r}")
    position = pd.Series(np.arange(len(table.user_ids)), index=table.user_ids)
    where = position.reindex(list(user_ids)).to_numpy()  # NaN for users without a labels row
    has_row = ~np.isnan(where)
    rows = where[has_row].astype(np.int64)
    encoded, classes = {}, {}
    for name in [c for c in table.raw.columns if c != ROW]:
        keys = [_label_key(v) for v in table.raw[name].tolist()]
        nul = [k is not None and "\x00" in k for k in keys]
        if any(nul):
            raise table.source.error(
                "the label value holds a NUL byte (\\x00)", row=int(table.raw[ROW].iloc[nul.index(True)]), column=name
            )
        if label_classes is not None and name in label_classes:
            names = list(label_classes[name])
        else:
            names = _infer_classes({k for k in keys if k is not None})
        lookup = {_label_key(c): i for i, c in enumerate(names)}
        index = np.array([-1 if k is None else lookup.get(k, -2) for k in keys], np.int64)
        invalid = index == -2
        if invalid.any() and invalid_labels == "raise":
            first = int(np.argmax(invalid))
            raise table.source.error(
                f"label {table.raw[name].iloc[first]!r} is not one of the classes {names}"
                " (pass label_classes, or invalid_labels='missing' to treat it as missing)",
                row=int(table.raw[ROW].iloc[first]),
                column=name,
            )
        values = np.full(len(user_ids), -1, np.int64)
        values[has_row] = index[rows]
        report.invalid_labels[name] = int((values == -2).sum())
        values[values == -2] = -1
        report.missing_labels[name] = int((values == -1).sum()) - report.invalid_labels[name]
        report.label_counts[name] = dict(zip(names, np.bincount(values[values >= 0], minlength=len(names)).tolist()))
        encoded[name], classes[name] = values, names
    report.invalid_labels = {k: v for k, v in report.invalid_labels.items() if v}
    report.missing_labels = {k: v for k, v in report.missing_labels.items() if v}
    return encoded, classes


def _label_key(value) -> str | None:
    """A comparable form of a label value: `1`, `1.0` and `"1"` are the same class; empty or null is missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _infer_classes(keys) -> list:
    keys = [str(k) for k in keys]
    if all(k.lstrip("-").isdigit() and str(int(k)) == k for k in keys):
        return sorted(int(k) for k in keys)
    return sorted(keys)
