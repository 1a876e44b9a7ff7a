"""
MovieLens 100K as a `BehaviorDataset`, from the GroupLens layout (`u.data`, `u.item`, `u.user`) or RecBole's atomic
files (`ml-100k.inter`, `ml-100k.item`, `ml-100k.user`, header `name:type`).

Behaviors: every rating, oldest first (ratings in the same second keep file order); text = "<title> (<year>) |
<genres>", e.g. "Toy Story (1995) | Animation, Children's, Comedy" (same text from both layouts).
Labels (`label_classes`): `age` in the paper's buckets ["<20", "20-39", "40-59", "60+"] (77 / 573 / 262 / 31
users), `gender` ["M", "F"] (M = 0, F = 1; 670 / 273), `occupation` (the 21 names, sorted).
CTR task: for each user, the rating at timeline position i >= `min_history` is an impression of that movie,
clicked = rating >= 4, history = the user's ratings before it (`history_end = i`; collators keep the last
`max_behaviors`, 100 by default); within each user the latest 10% of impressions (rounded up) are test, the 10%
before validation, the rest train. Ratings at positions < `min_history` are counted as
`dropped_impressions["short_history"]`. Note that `users` holds every rating, so pre-training on it sees the
behaviors (not the ratings) of the validation and test periods.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from .ctr import ctr_dataset_dict, split_by_time
from .errors import BehaviorLogError
from .events import SOURCE, clean_events
from .ingest import group_and_build
from .labels import LabelTable
from .readers import ROW, Source, find_bad_bytes
from .report import IngestReport

AGE_CLASSES = ["<20", "20-39", "40-59", "60+"]
GENDER_CLASSES = ["M", "F"]
GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
DEFAULT_PATHS = ("../shared/data/ml-100k", "data/ml-100k", "ml-100k")
TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def find_movielens(path: str | os.PathLike | None = None) -> str:
    """The directory to read: `path`, else `$PTUM_HF_DATA/ml-100k`, else the first of `DEFAULT_PATHS` that exists."""
    if path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no MovieLens directory at {os.fspath(path)!r}")
        return os.fspath(path)
    tried = [os.path.join(os.environ["PTUM_HF_DATA"], "ml-100k")] if "PTUM_HF_DATA" in os.environ else []
    for candidate in tried + list(DEFAULT_PATHS):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"MovieLens 100K not found (tried {tried + list(DEFAULT_PATHS)} from {os.getcwd()!r}); pass path=<directory "
        "with u.data/u.item/u.user or ml-100k.inter/.item/.user>. It is not downloaded (offline; GroupLens licence)."
    )


def load_movielens(
    path: str | os.PathLike | None = None,
    min_history: int = 5,
    validation: float = 0.1,
    test: float = 0.1,
    encoding: str | None = None,
):
    """
    Read MovieLens 100K (either layout, see the module docstring) into a `BehaviorDataset` with `age`, `gender`,
    `occupation` labels and the CTR task. `encoding` defaults to latin-1 for GroupLens, UTF-8 for RecBole files.
    """
    directory = find_movielens(path)
    if os.path.exists(os.path.join(directory, "u.data")):
        ratings, items, users = _read_grouplens(directory, encoding or "latin-1")
    else:
        ratings, items, users = _read_recbole(directory, encoding or "utf-8")
    sources = [ratings.attrs["source"]]
    report = IngestReport(
        files=[s.path for s in (ratings.attrs["source"], items.attrs["source"], users.attrs["source"])]
    )
    report.rows_read = len(ratings)

    known = ratings["item_id"].isin(items.index)
    if not known.all():
        row = int(ratings.loc[~known, ROW].iloc[0])
        raise sources[0].error(
            f"item {ratings.loc[~known, 'item_id'].iloc[0]!r} is not in the item file", row=row, column="item_id"
        )
    frame = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "timestamp": ratings["timestamp"],
            "text": items.loc[ratings["item_id"], "text"].to_numpy(),
            "rating": ratings["rating"],
            ROW: ratings[ROW],
            SOURCE: 0,
        }
    )
    frame = frame.iloc[np.argsort(_numeric_order(frame["user_id"]), kind="stable")]  # users in numeric order
    events = clean_events(frame, sources, report)
    labels = _labels(users)
    classes = {
        "age": AGE_CLASSES,
        "gender": GENDER_CLASSES,
        "occupation": sorted(set(users["occupation"].str.strip()) - {""}),
    }
    dataset, sequences, _ = group_and_build(events, report, labels=labels, label_classes=classes)
    dataset.ctr = _ctr(dataset, sequences, events, report, min_history, validation, test)
    report.check()
    return dataset


def _numeric_order(ids: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(ids, errors="coerce")
    return np.where(numbers.isna(), np.inf, numbers)


def _read_table(path: str, sep: str, names: list[str], encoding: str, header_lines: int = 0) -> pd.DataFrame:
    """A table of exactly len(names) `sep`-separated fields per line (after `header_lines`), as strings."""
    source = Source(path, "lines", encoding, header_lines)
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing MovieLens file {path!r}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise find_bad_bytes(source) from None
    lines = text.splitlines()[header_lines:]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BehaviorLogError("the file is empty" if not data.strip() else "the file has no records", path=path)
    counts = np.fromiter((line.count(sep) + 1 for line in lines), np.int64, len(lines))
    wrong = counts != len(names)
    if wrong.any():
        number = int(np.argmax(wrong))
        raise BehaviorLogError(
            f"expected {len(names)} fields separated by {sep!r}, found {counts[number]}",
            path=path,
            line=number + 1 + header_lines,
        )
    frame = pd.DataFrame([line.split(sep) for line in lines], columns=names, dtype=str)
    frame[ROW] = np.arange(len(frame))
    frame.attrs["source"] = source
    return frame


def _read_grouplens(directory: str, encoding: str):
    join = lambda name: os.path.join(directory, name)  # noqa: E731
    ratings = _read_table(join("u.data"), "\t", ["user_id", "item_id", "rating", "timestamp"], encoding)
    genres = GENRES
    if os.path.exists(join("u.genre")):
        listed = pd.read_csv(
            join("u.genre"), sep="|", header=None, dtype=str, encoding=encoding, keep_default_na=False
        ).dropna(how="all")
        genres = [g for g in listed[0].tolist() if g]
    item_columns = ["item_id", "title", "release_date", "video_release_date", "url"] + [
        f"g{i}" for i in range(len(genres))
    ]
    items = _read_table(join("u.item"), "|", item_columns, encoding)
    users = _read_table(join("u.user"), "|", ["user_id", "age", "gender", "occupation", "zip_code"], encoding)
    flags = items[[f"g{i}" for i in range(len(genres))]].to_numpy() == "1"
    names = np.array(genres, dtype=object)
    genre_text = [", ".join(names[row]) for row in flags]
    titles, years = [], []
    for title, date in zip(items["title"], items["release_date"]):
        match = TITLE_YEAR.match(title.strip())
        titles.append(match.group(1) if match else title.strip())
        years.append(match.group(2) if match else date.strip()[-4:])
    return ratings, _items(items, titles, years, genre_text), users


def _read_recbole(directory: str, encoding: str):
    def atomic(suffix: str, expected: list[str]) -> pd.DataFrame:
        candidates = sorted(f for f in os.listdir(directory) if f.endswith(suffix))
        if not candidates:
            raise FileNotFoundError(f"no u.data nor *{suffix} file in {directory!r}")
        path = os.path.join(directory, candidates[0])
        with open(path, encoding=encoding, errors="replace") as handle:
            header = [name.split(":")[0] for name in handle.readline().rstrip("\r\n").split("\t")]
        missing = [name for name in expected if name not in header]
        if missing:
            raise BehaviorLogError(f"missing column(s) {missing}; the header has {header}", path=path, line=1)
        return _read_table(path, "\t", header, encoding, header_lines=1)

    ratings = atomic(".inter", ["user_id", "item_id", "rating", "timestamp"])
    items = atomic(".item", ["item_id", "movie_title", "release_year", "class"])
    users = atomic(".user", ["user_id", "age", "gender", "occupation"])
    genre_text = [", ".join(g.split()) for g in items["class"]]
    return (
        ratings,
        _items(items, items["movie_title"].str.strip().tolist(), items["release_year"].tolist(), genre_text),
        users,
    )


def _items(items: pd.DataFrame, titles, years, genres) -> pd.DataFrame:
    """Item table indexed by item id, with the behavior text; refuses repeated item ids."""
    texts = []
    for title, year, genre in zip(titles, years, genres):
        year = str(year).strip()
        head = f"{title} ({year})" if year.isdigit() else title
        texts.append(f"{head} | {genre}" if genre else head)
    table = pd.DataFrame({"text": texts, ROW: items[ROW].to_numpy()}, index=items["item_id"].str.strip())
    table.attrs["source"] = items.attrs["source"]
    repeated = table.index.duplicated()
    if repeated.any():
        raise items.attrs["source"].error(
            f"item {table.index[repeated][0]!r} is listed twice", row=int(table[ROW][repeated][0]), column="item_id"
        )
    return table


def _labels(users: pd.DataFrame) -> LabelTable:
    source = users.attrs["source"]
    age = pd.to_numeric(users["age"].str.strip(), errors="coerce")
    bad = age.isna() | (age < 0)
    if bad.any():
        row = int(users[ROW][bad].iloc[0])
        raise source.error(f"age {users['age'][bad].iloc[0]!r} is not a number of years", row=row, column="age")
    buckets = np.array(AGE_CLASSES, dtype=object)[np.digitize(age.to_numpy(), [20, 40, 60])]
    raw = pd.DataFrame(
        {
            "age": buckets,
            "gender": users["gender"].str.strip(),
            "occupation": users["occupation"].str.strip(),
            ROW: users[ROW].to_numpy(),
        }
    )
    user_ids = users["user_id"].str.strip()
    repeated = user_ids.duplicated()
    if repeated.any():
        raise source.error(
            f"user {user_ids[repeated].iloc[0]!r} is listed twice",
            row=int(users[ROW][repeated].iloc[0]),
            column="user_id",
        )
    return LabelTable(source, user_ids.tolist(), raw)


def _ctr(dataset, sequences, events, report, min_history, validation, test):
    ratings = pd.to_numeric(events["rating"], errors="coerce").to_numpy()[sequences.order]
    if np.isnan(ratings).any():
        raise BehaviorLogError("a rating is not a number", path=report.files[0], column="rating")
    offsets = sequences.offsets
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    position = np.arange(len(owner)) - offsets[owner]
    report.impressions_read = len(owner)
    keep = position >= min_history
    report.drop_impressions("short_history", (~keep).sum())
    report.impressions_kept = int(keep.sum())
    behavior_ids = np.asarray(dataset.sequences().behavior_ids)
    columns = {
        "user_index": owner[keep],
        "history_end": position[keep],
        "ad_title_id": behavior_ids[keep],
        "ad_description_id": np.full(int(keep.sum()), -1),
        "label": (ratings[keep] >= 4).astype(np.int64),
        "timestamp": sequences.timestamps[keep],
    }
    return ctr_dataset_dict(columns, split_by_time(columns["timestamp"], columns["user_index"], validation, test))
