"""Raw behavior events -> the batches PTUM models take, for inference.

An event is one behavior of one user: `user_id` (a string or an integer), `timestamp` (unix seconds as a number, or a
date: ISO 8601 string, `datetime`, `numpy.datetime64`; dates without a zone are UTC) and `text`. Users come as a list
of event dicts, a pandas DataFrame or a `datasets.Dataset` with those columns, or a log path (CSV, TSV, JSON lines,
Parquet). A row whose `text` and `timestamp` hold lists is one whole user.

The rules are those of `ptum_hf.data.read_behavior_log`, so a user gets the vector `ptum-hf embed` gives: texts have
their whitespace runs made one space; the same (user, time, text) again is dropped; each user's events are ordered by
time (ties keep input order); users keep their order of first appearance. A model sees each user's last
`config.max_behaviors` behaviors, with time gaps in seconds to the last of them (`history_windows`, the rule every
collator of `ptum_hf.data` uses). Unlike `read_behavior_log`, which drops such events and counts them, a missing or
unusable id, time or text is refused with an error naming the event; numbers are always seconds, and texts are not cut
(their tokens are, at `config.max_tokens_per_behavior`).

Only numpy, torch and transformers are imported (pandas too, for a Parquet log), so this file ships with every
checkpoint beside the modeling file that uses it.
"""

import csv
import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from .modeling_ptum import PAD_INDEX

EVENT_COLUMNS = ("user_id", "timestamp", "text")
LOG_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
LOG_FORMATS.update({".parquet": "parquet", ".pq": "parquet"})
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")  # any of them: a saved tokenizer


@dataclass
class UserEvents:
    """Users' events grouped and time-ordered: user `u`'s events are `[offsets[u], offsets[u + 1])` of the flat
    `behavior_ids` (indices into `texts`, each distinct text once) and `timestamps` (int64 unix seconds)."""

    user_ids: list
    texts: list
    behavior_ids: np.ndarray
    timestamps: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class UserEmbeddings:
    """`model.encode(users)`: `embeddings` (num_users, hidden_size), row i is user `user_ids[i]` (input order)."""

    user_ids: list
    embeddings: "np.ndarray | torch.Tensor"


@dataclass
class UserPredictions:
    """`model.predict(users)`: `labels[head][i]`, the most probable class name of user `user_ids[i]` per head."""

    user_ids: list
    labels: dict


@dataclass
class UserProbabilities:
    """`model.predict_proba(users)`: `probabilities[head]` (num_users, num_classes), columns in `class_names[head]`
    order."""

    user_ids: list
    probabilities: dict
    class_names: dict


def history_windows(behavior_ids, timestamps, starts, ends, max_behaviors: int):
    """The history a PTUM model sees: of events `[starts[u], ends[u])` (flat arrays, time-ordered per user), the last
    `max_behaviors`. Returns (ids (B, N) with -1 padding, time gaps (B, N) float32: seconds from each behavior to the
    window's last one, 0 at padding; lengths (B,))."""
    lengths = np.minimum(ends - starts, max_behaviors)
    width = int(lengths.max()) if len(lengths) else 0
    index = (ends - lengths)[:, None] + np.arange(width)
    valid = np.arange(width) < lengths[:, None]
    index = np.where(valid, index, 0)
    ids = np.where(valid, behavior_ids[index], PAD_INDEX)
    reference = timestamps[np.maximum(ends - 1, 0)]
    gaps = np.where(valid, reference[:, None] - timestamps[index], 0).astype(np.float32)
    return ids, gaps, lengths


def text_hashes(texts) -> np.ndarray:
    """A stable 64-bit hash of each text (blake2b of its UTF-8 bytes): `config.behavior_id_buckets` picks a text's
    id embedding by this hash, the same in every process and dataset."""
    digest = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(digest(str(t).encode("utf-8"), digest_size=8).digest(), "little") for t in texts),
        np.uint64,
        len(texts),
    )


# ----------------------------------------------------------------------------- reading users


def read_user_events(users) -> UserEvents:
    """Group raw events (see the module docstring for what `users` may be) into `UserEvents`."""
    ids, times, texts = _event_columns(users)
    ids, times, texts = _explode_user_rows(ids, times, texts)
    if not ids:
        raise ValueError("no events given: users must hold at least one event (user_id, timestamp, text)")
    ids = [_user_id(value, row) for row, value in enumerate(ids)]
    texts = [_text(value, row) for row, value in enumerate(texts)]
    seconds = _timestamps(times)
    keep = _first_occurrences(ids, seconds, texts)
    user_index, text_index = {}, {}
    codes = np.fromiter((user_index.setdefault(ids[i], len(user_index)) for i in keep), np.int64, len(keep))
    behavior_ids = np.fromiter((text_index.setdefault(texts[i], len(text_index)) for i in keep), np.int64, len(keep))
    seconds = seconds[keep]
    order = np.lexsort((np.arange(len(keep)), seconds, codes))
    offsets = np.zeros(len(user_index) + 1, np.int64)
    np.cumsum(np.bincount(codes, minlength=len(user_index)), out=offsets[1:])
    return UserEvents(list(user_index), list(text_index), behavior_ids[order], seconds[order], offsets)


def _event_columns(users) -> tuple[list, list, list]:
    if isinstance(users, UserEvents):
        raise TypeError("users are already grouped: pass the raw events")
    if isinstance(users, (str, os.PathLike)):
        users = _read_log(os.fspath(users))
    if isinstance(users, dict):
        raise TypeError(
            "users must be a list of events, e.g. [{'user_id': 'u1', 'timestamp': 1700000000, 'text': 'a title'}], a "
            "pandas DataFrame, a datasets.Dataset or a log path; got one dict (wrap a single event in a list)"
        )
    columns = getattr(users, "column_names", None)  # a datasets.Dataset
    if columns is None and hasattr(users, "columns") and hasattr(users, "to_dict"):  # a pandas DataFrame
        columns = [str(c) for c in users.columns]
    if columns is not None:
        missing = [name for name in EVENT_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"the events lack column(s) {missing}; they have {list(columns)}")
        return tuple(_column(users, name) for name in EVENT_COLUMNS)
    if not isinstance(users, (list, tuple)):
        raise TypeError(
            "users must be a list of event dicts, a pandas DataFrame, a datasets.Dataset or a log path "
            f"(CSV/TSV/JSONL/Parquet); got {type(users).__name__}"
        )
    for row, event in enumerate(users):
        if not isinstance(event, dict):
            raise TypeError(f"event {row} is a {type(event).__name__}, not a dict with keys {list(EVENT_COLUMNS)}")
        missing = [name for name in EVENT_COLUMNS if name not in event]
        if missing:
            raise ValueError(f"event {row} lacks key(s) {missing}; it has {sorted(event)}")
    return tuple([event[name] for event in users] for name in EVENT_COLUMNS)


def _column(table, name: str) -> list:
    column = table[name]
    if hasattr(column, "dtype") and str(column.dtype).startswith("datetime64"):  # pandas: keep zones, exact seconds
        return list(column)
    return column.tolist() if hasattr(column, "tolist") else list(column)


def _read_log(path: str):
    """A log file's rows: event dicts (CSV, TSV, JSON lines; `.gz` too) or a DataFrame (Parquet)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such log file: {path!r}")
    root, suffix = os.path.splitext(path.lower())
    if suffix == ".gz":
        suffix = os.path.splitext(root)[1]
    kind = LOG_FORMATS.get(suffix)
    if kind is None:
        raise ValueError(f"cannot tell the format of {path!r} from its suffix; use one of {', '.join(LOG_FORMATS)}")
    if kind == "parquet":
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("reading a Parquet log needs pandas and pyarrow (pip install pandas pyarrow)") from None
        return pd.read_parquet(path)
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        if kind == "jsonl":
            rows = []
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {line_number}: invalid JSON ({error.msg})") from None
            return rows
        # Values stay strings (ids keep their digits); TSV fields hold no tab, so quotes are plain characters there.
        tsv = kind == "tsv"
        reader = csv.DictReader(
            handle, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        )
        missing = [name for name in EVENT_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; its header names {reader.fieldnames}")
        return list(reader)


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _explode_user_rows(ids: list, times: list, texts: list) -> tuple[list, list, list]:
    """Rows holding one whole user (lists in `text` and `timestamp`) -> one row per event."""
    if not any(map(_is_list, texts)):
        return list(ids), list(times), list(texts)
    flat = ([], [], [])
    for row, (user, time, text) in enumerate(zip(ids, times, texts)):
        if not _is_list(text) or not _is_list(time) or len(text) != len(time):
            raise ValueError(
                f"row {row} (user {user!r}): a per-user row needs lists of equal length in text and timestamp"
            )
        flat[0].extend([user] * len(text))
        flat[1].extend(time)
        flat[2].extend(text)
    return flat


def _user_id(value, row: int) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, str) and value.strip() and "\x00" not in value:
        return value.strip()
    raise ValueError(f"event {row}: user_id must be a non-empty string or an integer, got {value!r}")


def _text(value, row: int) -> str:
    text = " ".join(str(value).split()) if isinstance(value, (str, int, np.integer)) else ""
    if not text or "\x00" in text:
        raise ValueError(f"event {row}: text must be a non-empty string without NUL bytes, got {value!r}")
    return text


def _timestamps(values: list) -> np.ndarray:
    """Unix seconds (int64, floored) of every value; refuses what is not a time, naming the event."""
    seconds = np.empty(len(values), np.int64)
    for row, value in enumerate(values):
        seconds[row] = _seconds(value, row)
    return seconds


def _seconds(value, row: int) -> int:
    if isinstance(value, (bool, np.bool_)) or _is_missing(value):
        raise ValueError(f"event {row}: timestamp must be unix seconds or a date, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return int(value.astype("datetime64[s]").astype(np.int64))
    if isinstance(value, datetime):  # pandas.Timestamp too
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return math.floor(value.timestamp())
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                return _seconds(datetime.fromisoformat(text.replace("Z", "+00:00")), row)
            except ValueError:
                pass
        else:
            if text.lstrip("+-").isdigit():
                return int(text)
            value = number
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return math.floor(value)
    raise ValueError(
        f"event {row}: timestamp must be unix seconds (a number) or a date (ISO 8601, datetime), got {value!r}"
    )


def _is_missing(value) -> bool:
    try:
        return value is None or bool(value != value)  # NaN and NaT differ from themselves
    except TypeError:  # pandas.NA: its comparisons are NA
        return True


def _first_occurrences(ids: list, seconds: np.ndarray, texts: list) -> np.ndarray:
    """Positions of the events that are not a repeat of an earlier (user, time, text)."""
    seen = set()
    keep = []
    for position, key in enumerate(zip(ids, seconds.tolist(), texts)):
        if key not in seen:
            seen.add(key)
            keep.append(position)
    return np.asarray(keep, np.int64)


# ----------------------------------------------------------------------------- batches


def load_tokenizer_of(model, tokenizer=None):
    """`tokenizer` if given, else the one saved with the model's checkpoint (`model.name_or_path`)."""
    if tokenizer is not None:
        return tokenizer
    path = getattr(model, "name_or_path", "") or ""
    if not path:
        raise ValueError("this model was not loaded from a checkpoint: pass tokenizer= (the one it was trained with)")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise OSError(
            f"the checkpoint {path!r} holds no tokenizer ({' / '.join(TOKENIZER_FILES)}); pass tokenizer= (the one "
            "the model was trained with), or save it there with tokenizer.save_pretrained"
        )
    from transformers import AutoTokenizer

    try:
        # config=: the tokenizer needs nothing else from config.json, and reading it would ask to run its code.
        return AutoTokenizer.from_pretrained(path, config=model.config)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the tokenizer saved with {path!r} ({error}); pass tokenizer=") from error


def tokenize_behaviors(tokenizer, texts: list, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (M, L) int64 of `texts`, each cut to `max_tokens` (special tokens included),
    padded with the tokenizer's pad id; a text with no token gets `[UNK]`."""
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token first")
    rows = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_tokens,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad
    rows = [row if len(row) else [unk] for row in rows]
    width = max((len(row) for row in rows), default=0)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def iter_user_batches(events: UserEvents, tokenizer, config, batch_size: int = 64):
    """Yield (user ids, model inputs) per batch of users: the behavior table of the batch, `history_indices` and
    `history_time_gaps` (`history_windows`), and `behavior_bucket_ids` with `config.behavior_id_buckets`."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    texts = np.asarray(events.texts, dtype=object)
    for start in range(0, len(events), batch_size):
        stop = min(start + batch_size, len(events))
        starts, ends = events.offsets[start:stop], events.offsets[start + 1 : stop + 1]
        ids, gaps, _ = history_windows(events.behavior_ids, events.timestamps, starts, ends, config.max_behaviors)
        table = np.unique(ids[ids >= 0])
        input_ids, mask = tokenize_behaviors(tokenizer, texts[table].tolist(), config.max_tokens_per_behavior)
        inputs = {
            "behavior_input_ids": input_ids,
            "behavior_attention_mask": mask,
            "history_indices": torch.from_numpy(np.where(ids >= 0, np.searchsorted(table, np.maximum(ids, 0)), ids)),
            "history_time_gaps": torch.from_numpy(gaps),
        }
        if config.behavior_id_buckets:
            buckets = text_hashes(texts[table].tolist()) % np.uint64(config.behavior_id_buckets)
            inputs["behavior_bucket_ids"] = torch.from_numpy(buckets.astype(np.int64))
        yield events.user_ids[start:stop], inputs


def class_names(config) -> dict:
    """Each label head's class names in class id order: `config.label_names` where it names them, else the ids as
    strings."""
    named = getattr(config, "label_names", None) or {}
    names = {}
    for head, count in config.label_heads.items():
        given = named.get(head)
        names[head] = [str(name) for name in given] if given else [str(i) for i in range(count)]
        if len(names[head]) != count:
            raise ValueError(f"config.label_names[{head!r}] has {len(names[head])} names for {count} classes")
    return names


__all__ = [
    "EVENT_COLUMNS",
    "UserEmbeddings",
    "UserEvents",
    "UserPredictions",
    "UserProbabilities",
    "class_names",
    "history_windows",
    "iter_user_batches",
    "load_tokenizer_of",
    "read_user_events",
    "text_hashes",
    "tokenize_behaviors",
]
