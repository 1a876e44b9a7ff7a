"""
The Microsoft News Dataset (MIND) layout as a `BehaviorDataset` with a CTR task.

Files (tab-separated, no header, UTF-8): `news.tsv`: news_id, category, subcategory, title, abstract, url,
title_entities, abstract_entities (only the first five are used; fewer than four fields is an error);
`behaviors.tsv`: impression_id, user_id, time (`11/11/2019 9:05:47 AM`), history (`N1 N2 ...`, oldest first),
impressions (`N3-1 N4-0`).

Behaviors (text = the news title): a user's clicked-news history, then the news they clicked in impressions, at the
impression time. MIND gives no time for history clicks: history item j of n gets `t0 - (n - j) *
history_spacing` seconds, t0 being the user's first impression time, so the history keeps its order, precedes
every impression and is `history_spacing` (1 s) apart. The history is taken from the user's earliest impression
row (MIND repeats it in every row; users whose rows disagree are counted in `report.notes`).

CTR task: each labelled impression item is an example: `ad_title_id` = the news title, `ad_description_id` = its
abstract (-1 when empty), `label` = the click, history = the user's behaviors strictly before the impression time.
Dropped and counted (`dropped_impressions`): unlabelled items (MIND's test set), news missing from news.tsv or
without a title, and impressions with an empty history (the model cannot encode it). Split by time over all
impressions: the latest 10% (rounded up) test, the 10% before validation.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .ctr import ctr_dataset_dict, history_ends, split_by_time
from .errors import BehaviorLogError
from .events import SOURCE, clean_events
from .ingest import group_and_build
from .movielens import _read_table
from .readers import ROW
from .report import IngestReport

NEWS_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities"]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def load_mind(
    path: str | os.PathLike,
    history_spacing: int = 1,
    clicks_as_behaviors: bool = True,
    min_behaviors: int = 1,
    validation: float = 0.1,
    test: float = 0.1,
    encoding: str = "utf-8",
):
    """Read a MIND directory (`news.tsv`, `behaviors.tsv`) into a `BehaviorDataset` with a CTR task."""
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no MIND directory at {directory!r}")
    news = _read_news(os.path.join(directory, "news.tsv"), encoding)
    rows = _read_table(os.path.join(directory, "behaviors.tsv"), "\t", BEHAVIOR_COLUMNS, encoding)
    source = rows.attrs["source"]
    rows["user_id"] = rows["user_id"].str.strip()
    times = pd.to_datetime(rows["time"].str.strip(), format=TIME_FORMAT, errors="coerce")
    if times.isna().any():
        first = int(np.argmax(times.isna().to_numpy()))
        raise source.error(
            f"cannot parse time {rows['time'].iloc[first]!r} (expected like '11/11/2019 9:05:47 AM')",
            row=first,
            column="time",
        )
    rows["seconds"] = times.to_numpy().astype("datetime64[s]").astype(np.int64)
    report = IngestReport(files=[news.attrs["source"].path, source.path])
    report.rows_read = len(rows)  # behaviors.tsv lines

    impressions = _impressions(rows, source)
    events = _history_events(rows, history_spacing, report)
    if clicks_as_behaviors:
        clicks = impressions[impressions["label"] == 1]
        events = pd.concat(
            [
                events,
                pd.DataFrame(
                    {
                        "user_id": clicks["user_id"],
                        "timestamp": clicks["seconds"],
                        "news_id": clicks["news_id"],
                        ROW: clicks[ROW],
                    }
                ),
            ],
            ignore_index=True,
        )
    events = events.sort_values([ROW, "timestamp"], kind="stable")
    title = news["title"].reindex(events["news_id"]).to_numpy()
    unknown = pd.isna(title)
    report.events_read += int(unknown.sum())
    report.drop_events("unknown_news", unknown.sum())
    events = events[~unknown].assign(text=title[~unknown], **{SOURCE: 0})
    cleaned = clean_events(events[["user_id", "timestamp", "text", ROW, SOURCE]], [source], report)

    ad_texts = _ad_texts(news, impressions)
    dataset, sequences, extra_ids = group_and_build(
        cleaned, report, min_behaviors=min_behaviors, raw_users=set(rows["user_id"]), extra_texts=ad_texts
    )
    dataset.ctr = _ctr(dataset, impressions, news, extra_ids, report, validation, test)
    report.check()
    return dataset


def _read_news(path: str, encoding: str) -> pd.DataFrame:
    with open(path, "rb") as handle:
        first = handle.readline()
    fields = first.count(b"\t") + 1
    if fields < 4:
        raise BehaviorLogError(
            f"news.tsv needs at least 4 tab-separated fields (id, category, subcategory, title), found {fields}",
            path=path,
            line=1,
        )
    names = (
        NEWS_COLUMNS[:fields]
        if fields <= len(NEWS_COLUMNS)
        else NEWS_COLUMNS + [f"extra{i}" for i in range(fields - len(NEWS_COLUMNS))]
    )
    table = _read_table(path, "\t", names, encoding)
    if "abstract" not in table:
        table["abstract"] = ""
    table["news_id"] = table["news_id"].str.strip()
    repeated = table["news_id"].duplicated()
    if repeated.any():
        raise table.attrs["source"].error(
            f"news {table['news_id'][repeated].iloc[0]!r} is listed twice",
            row=int(table[ROW][repeated].iloc[0]),
            column="news_id",
        )
    news = table.set_index("news_id")[["title", "abstract"]]
    for column in ("title", "abstract"):
        news[column] = news[column].str.replace(r"\s+", " ", regex=True).str.strip()
    news.attrs["source"] = table.attrs["source"]
    return news


def _impressions(rows: pd.DataFrame, source) -> pd.DataFrame:
    """One row per impression item: user_id, seconds, news_id, label (-1 when unlabelled), `_row`."""
    items = rows[["user_id", "seconds", ROW]].assign(item=rows["impressions"].str.split()).explode("item")
    items = items[items["item"].notna()]
    parts = items["item"].str.rpartition("-")
    labelled = parts[1] == "-"
    label = np.where(labelled & parts[2].isin(["0", "1"]), pd.to_numeric(parts[2], errors="coerce"), -1)
    bad = labelled & ~parts[2].isin(["0", "1"]) & parts[2].str.fullmatch(r"\d+")
    if bad.any():
        raise source.error(
            f"impression {items['item'][bad].iloc[0]!r}: the click label must be 0 or 1",
            row=int(items[ROW][bad].iloc[0]),
            column="impressions",
        )
    news_id = np.where(label >= 0, parts[0], items["item"])
    return pd.DataFrame(
        {
            "user_id": items["user_id"].to_numpy(),
            "seconds": items["seconds"].to_numpy(),
            "news_id": news_id,
            "label": label.astype(np.int64),
            ROW: items[ROW].to_numpy(),
        }
    )


def _history_events(rows: pd.DataFrame, spacing: int, report: IngestReport) -> pd.DataFrame:
    """History clicks of each user's earliest row, timestamped before the user's first impression."""
    ordered = rows.sort_values(["user_id", "seconds", ROW], kind="stable")
    first = ordered.drop_duplicates("user_id")
    disagree = ordered.groupby("user_id")["history"].nunique()
    if (disagree > 1).any():
        report.notes.append(
            f"mind: {(disagree > 1).sum()} users have different histories in different rows; "
            "the earliest row's history is used"
        )
    items = first[["user_id", "seconds", ROW]].assign(news_id=first["history"].str.split()).explode("news_id")
    items = items[items["news_id"].notna()]
    position = items.groupby("user_id", sort=False).cumcount().to_numpy()
    size = items.groupby("user_id", sort=False)["news_id"].transform("size").to_numpy()
    return pd.DataFrame(
        {
            "user_id": items["user_id"].to_numpy(),
            "timestamp": items["seconds"].to_numpy() - (size - position) * spacing,
            "news_id": items["news_id"].to_numpy(),
            ROW: items[ROW].to_numpy(),
        }
    )


def _ad_texts(news: pd.DataFrame, impressions: pd.DataFrame) -> list[str]:
    shown = news.reindex(pd.unique(impressions["news_id"])).dropna(subset=["title"])
    texts = [t for t in shown["title"].tolist() + shown["abstract"].tolist() if t]
    return list(dict.fromkeys(texts))


def _ctr(dataset, impressions, news, extra_ids, report, validation, test):
    report.impressions_read = len(impressions)
    keep = impressions["label"].to_numpy() >= 0
    report.drop_impressions("unlabelled", (~keep).sum())
    shown = news.reindex(impressions["news_id"])
    titles, abstracts = shown["title"].fillna("").to_numpy(), shown["abstract"].fillna("").to_numpy()
    unknown = keep & shown["title"].isna().to_numpy()
    report.drop_impressions("unknown_news", unknown.sum())
    keep &= ~unknown
    untitled = keep & (titles == "")
    report.drop_impressions("missing_title", untitled.sum())
    keep &= ~untitled
    row_of = pd.Series(np.arange(dataset.users.num_rows), index=dataset.users["user_id"])
    user_index = row_of.reindex(impressions["user_id"]).to_numpy()
    no_user = keep & np.isnan(user_index)
    report.drop_impressions("user_without_behaviors", no_user.sum())
    keep &= ~no_user
    sequences = dataset.sequences()
    users = np.where(keep, np.nan_to_num(user_index), 0).astype(np.int64)
    ends = history_ends(sequences.offsets, sequences.timestamps, users, impressions["seconds"].to_numpy(np.int64))
    empty = keep & (ends == 0)
    report.drop_impressions("empty_history", empty.sum())
    keep &= ~empty
    report.impressions_kept = int(keep.sum())
    columns = {
        "user_index": users[keep],
        "history_end": ends[keep],
        "ad_title_id": np.array([extra_ids[t] for t in titles[keep]], np.int64),
        "ad_description_id": np.array([extra_ids[a] if a else -1 for a in abstracts[keep]], np.int64),
        "label": impressions["label"].to_numpy()[keep],
        "timestamp": impressions["seconds"].to_numpy()[keep],
    }
    return ctr_dataset_dict(columns, split_by_time(columns["timestamp"], None, validation, test))
