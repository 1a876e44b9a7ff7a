"""
A synthetic behavior log with planted structure, for demos, tests and benchmarks.

The world (fixed by `seed`): `num_topics` topics, each with its own pseudo-words (plus generic words shared by all
topics); a catalogue of titles (3-8 words, mostly from one topic's words, Zipf-popular within the topic) that
recur across users; ads (a title and a 8-16 word description) each about one topic.

A user has two interest mixtures over topics (Dirichlet draws; the second is the first moved by `drift`), and the
interest at relative position s of the timeline is (1 - s) * start + s * end. Each behavior picks a topic from the
interest at its time, then a catalogue title of that topic, or (`fresh_fraction`) a new title made of that topic's
words. Labels depend on the user's mean interest through random linear maps, one per label, with `label_noise`
of the labels replaced by random classes:
    age = argmax((mean_interest - 1/T) @ W_age) (4 classes), gender = argmax(... @ W_gender) (2 classes).
A single behavior reveals one topic drawn from a mixture of several, so it predicts a label only weakly; the whole
history estimates the mixture and predicts it well (a bag-of-words logistic regression on the whole history is
far above one on the last behavior alone). Words reveal their topic only through co-occurrence,
which is what pre-training on unlabeled sequences can learn.
CTR: impressions at random points of a user's timeline show an ad about a topic (half from the user's current
interest, half uniform); clicked ~ Bernoulli(sigmoid(log(T * interest[ad topic] + 0.05) - 1.5)): about 23%
clicks; the cosine of the history's and the ad's word counts alone is already a strong scorer.

Generation runs in blocks of `BLOCK` users, each from its own seed, so the in-memory and the streaming versions
hold the same users, and the streaming one can be sharded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from .ctr import ctr_dataset_dict, split_by_time
from .dataset import BehaviorDataset, users_dataset
from .iterable import iterable_from_tables, list_array
from .report import IngestReport

BLOCK = 2048
CONSONANTS = list("bdfgklmnprstvz")
VOWELS = list("aeiou")
AGE_CLASSES = ["<20", "20-39", "40-59", "60+"]
GENDER_CLASSES = ["M", "F"]


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic log (see the module docstring for what they mean)."""

    num_users: int = 5000
    seed: int = 0
    num_topics: int = 12
    words_per_topic: int = 80
    generic_words: int = 300
    topic_word_share: float = 0.8
    catalogue_size: int = 5000
    fresh_fraction: float = 0.15
    interest_concentration: float = 0.3
    drift: float = 0.3
    min_length: int = 5
    mean_length: int = 30
    max_length: int = 200
    label_noise: float = 0.05
    num_ads: int = 200
    impressions_per_user: int = 5
    ctr_min_history: int = 5
    start_time: int = 1_577_836_800  # 2020-01-01
    start_spread_days: int = 60
    mean_gap_hours: float = 8.0

    def __post_init__(self):
        if not 1 <= self.num_users <= 10_000_000:
            raise ValueError(f"num_users must be in 1..10,000,000, got {self.num_users}")
        if not 1 <= self.min_length <= self.mean_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= mean_length <= max_length")
        if self.num_topics < 2 or self.catalogue_size < self.num_topics or self.num_ads < self.num_topics:
            raise ValueError("need num_topics >= 2, catalogue_size >= num_topics, num_ads >= num_topics")
        for name in ("topic_word_share", "fresh_fraction", "drift", "label_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class World:
    """Everything fixed by the seed: words, topics, catalogue, ads and the label maps."""

    def __init__(self, config: SyntheticConfig):
        self.config = c = config
        rng = np.random.default_rng([c.seed, 0xC0FFEE])
        self.words = _pseudo_words(c.num_topics * c.words_per_topic + c.generic_words, rng)
        self.topic_words = np.arange(c.num_topics * c.words_per_topic).reshape(c.num_topics, c.words_per_topic)
        self.generic = np.arange(c.num_topics * c.words_per_topic, len(self.words))
        per_topic = c.catalogue_size // c.num_topics
        self.catalogue_topics = np.repeat(np.arange(c.num_topics), per_topic)
        self.topic_items = np.arange(per_topic * c.num_topics).reshape(c.num_topics, per_topic)
        self.catalogue = self.titles(self.catalogue_topics, rng)
        self.item_cdf = _zipf_cdf(per_topic)
        self.ad_topics = np.arange(c.num_ads) % c.num_topics
        self.ad_titles = self.titles(self.ad_topics, rng)
        self.ad_descriptions = self.titles(self.ad_topics, rng, low=8, high=16)
        self.weights = {"age": rng.normal(size=(c.num_topics, 4)), "gender": rng.normal(size=(c.num_topics, 2))}

    def titles(self, topics: np.ndarray, rng: np.random.Generator, low: int = 3, high: int = 8) -> list[str]:
        """One text per topic: `low`..`high` words, each from the topic's words (Zipf) or the generic ones."""
        c = self.config
        lengths = rng.integers(low, high + 1, len(topics))
        topical = rng.random((len(topics), high)) < c.topic_word_share
        rank = np.searchsorted(_zipf_cdf(c.words_per_topic), rng.random((len(topics), high)))
        generic = self.generic[rng.integers(0, len(self.generic), (len(topics), high))]
        index = np.where(topical, self.topic_words[topics[:, None], rank], generic)
        # One join and one split instead of a join per title: a sentinel word ends each title.
        index = np.concatenate([index, np.zeros((len(topics), 1), np.int64)], axis=1)
        index[np.arange(len(topics)), lengths] = len(self.words)
        flat = np.append(self.words, "\n")[index[np.arange(high + 1) <= lengths[:, None]]]
        if not len(flat):
            return []
        titles = " ".join(flat.tolist()).split(" \n ")
        titles[-1] = titles[-1][:-2]
        return titles


def _pseudo_words(count: int, rng: np.random.Generator) -> np.ndarray:
    syllables = np.array([a + b for a in CONSONANTS for b in VOWELS])
    n = len(syllables)
    codes = rng.choice(n**2 + n**3, size=count, replace=False)
    words = []
    for code in codes.tolist():
        if code < n**2:
            words.append(syllables[code // n] + syllables[code % n])
        else:
            code -= n**2
            words.append(syllables[code // n**2] + syllables[(code // n) % n] + syllables[code % n])
    return np.array(words, dtype=object)


def _zipf_cdf(size: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


@dataclass
class Block:
    """Users [first, first + len(lengths)) of the log. Events: catalogue index, or -1 - index into `fresh`."""

    first: int
    lengths: np.ndarray
    items: np.ndarray
    fresh: list[str]
    timestamps: np.ndarray
    labels: dict[str, np.ndarray]
    impressions: dict[str, np.ndarray]


def generate_block(world: World, index: int) -> Block:
    """Users of block `index` (deterministic given the seed and the index, whatever `num_users` is)."""
    c = world.config
    rng = np.random.default_rng([c.seed, index])
    first = index * BLOCK
    users = BLOCK  # always a full block, so user i does not depend on num_users; cut below
    sigma = 0.8
    lengths = rng.lognormal(np.log(c.mean_length) - sigma**2 / 2, sigma, users)
    lengths = np.clip(np.round(lengths), c.min_length, c.max_length).astype(np.int64)
    alpha = np.full(c.num_topics, c.interest_concentration)
    start = rng.dirichlet(alpha, users)
    end = (1 - c.drift) * start + c.drift * rng.dirichlet(alpha, users)

    labels = {}
    for name, weights in world.weights.items():
        label = np.argmax((0.5 * (start + end) - 1 / c.num_topics) @ weights, axis=1)
        noisy = rng.random(users) < c.label_noise
        label[noisy] = rng.integers(0, weights.shape[1], int(noisy.sum()))
        labels[name] = label.astype(np.int64)

    owner = np.repeat(np.arange(users), lengths)
    offsets = np.r_[0, np.cumsum(lengths)]
    position = np.arange(len(owner)) - offsets[owner]
    progress = position / np.maximum(lengths[owner] - 1, 1)
    topics = _draw_topics(start, end, owner, progress, rng)
    rank = np.searchsorted(world.item_cdf, rng.random(len(owner)))
    items = world.topic_items[topics, rank]
    fresh = rng.random(len(owner)) < c.fresh_fraction
    fresh_texts = world.titles(topics[fresh], rng)
    items[fresh] = -1 - np.arange(int(fresh.sum()))

    # Strictly increasing seconds (gap >= 1 s), so no two events of a user tie.
    gaps = 1 + np.floor(rng.exponential(c.mean_gap_hours * 3600, len(owner))).astype(np.int64)
    starts = c.start_time + rng.integers(0, c.start_spread_days * 86400, users)
    gaps[offsets[:-1]] = 0
    times = np.cumsum(gaps)
    times = times - np.repeat(times[offsets[:-1]], lengths) + np.repeat(starts, lengths)
    impressions = _impressions(world, start, end, lengths, offsets, times, rng)
    keep = min(BLOCK, c.num_users - first)
    inside = impressions["user"] < keep
    return Block(
        first,
        lengths[:keep],
        items[: offsets[keep]],
        fresh_texts,
        times[: offsets[keep]],
        {name: label[:keep] for name, label in labels.items()},
        {name: values[inside] for name, values in impressions.items()},
    )


def _draw_topics(start, end, owner, progress, rng) -> np.ndarray:
    """Topic of each event from the interest at its time: the end mixture with probability `progress`."""
    late = rng.random(len(owner)) < progress
    cdf = np.cumsum(start, axis=1)[owner]
    cdf[late] = np.cumsum(end, axis=1)[owner[late]]
    return np.minimum((cdf < rng.random(len(owner))[:, None]).sum(axis=1), start.shape[1] - 1)


def _impressions(world, start, end, lengths, offsets, times, rng) -> dict[str, np.ndarray]:
    c = world.config
    eligible = np.flatnonzero(lengths >= c.ctr_min_history)
    owner = np.repeat(eligible, c.impressions_per_user)
    if not len(owner):
        return {k: np.zeros(0, np.int64) for k in ("user", "history_end", "ad", "label", "timestamp")}
    n = lengths[owner]
    history_end = c.ctr_min_history + (rng.random(len(owner)) * (n - c.ctr_min_history + 1)).astype(np.int64)
    last = times[offsets[owner] + history_end - 1]
    following = np.where(
        history_end < n,
        times[np.minimum(offsets[owner] + history_end, len(times) - 1)],
        last + 2 * int(c.mean_gap_hours * 3600),
    )
    timestamp = last + (rng.random(len(owner)) * (following - last)).astype(np.int64)
    progress = (history_end / np.maximum(n - 1, 1)).clip(0, 1)
    interest = (1 - progress[:, None]) * start[owner] + progress[:, None] * end[owner]
    from_interest = rng.random(len(owner)) < 0.5
    drawn = np.minimum((np.cumsum(interest, 1) < rng.random(len(owner))[:, None]).sum(1), c.num_topics - 1)
    topic = np.where(from_interest, drawn, rng.integers(0, c.num_topics, len(owner)))
    ads_per_topic = np.bincount(world.ad_topics, minlength=c.num_topics)
    ad = topic + c.num_topics * (rng.random(len(owner)) * ads_per_topic[topic]).astype(np.int64)
    logit = np.log(c.num_topics * interest[np.arange(len(owner)), topic] + 0.05) - 1.5
    label = (rng.random(len(owner)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {"user": owner, "history_end": history_end, "ad": ad, "label": label, "timestamp": timestamp}


def _blocks(config: SyntheticConfig) -> range:
    return range((config.num_users + BLOCK - 1) // BLOCK)


def load_synthetic(streaming: bool = False, **kwargs) -> BehaviorDataset | datasets.IterableDataset:
    """
    The synthetic log: a `BehaviorDataset` with `age` and `gender` labels and a CTR task (split by time over all
    impressions: the latest 10% test, the 10% before validation), or with `streaming=True` an `IterableDataset` of
    per-user rows (`user_id`, `behavior_texts`, `timestamps`, `age`, `gender`; no CTR task), generated lazily.
    Keyword arguments are `SyntheticConfig` fields, e.g. `num_users=100_000, seed=1`.
    """
    config = SyntheticConfig(**kwargs)
    if streaming:
        return iterable_from_tables(
            _stream, {"config": asdict(config), "blocks": list(_blocks(config))}, STREAM_FEATURES
        )
    world = World(config)
    blocks = [generate_block(world, i) for i in _blocks(config)]
    return _assemble(world, blocks)


STREAM_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "behavior_texts": datasets.List(datasets.Value("string")),
        "timestamps": datasets.List(datasets.Value("int64")),
        "age": datasets.Value("int64"),
        "gender": datasets.Value("int64"),
    }
)


def _stream(config: dict, blocks: list[int]):
    """One Arrow table of per-user rows per block."""
    world = World(SyntheticConfig(**config))
    catalogue = world.catalogue
    for index in blocks:
        block = generate_block(world, index)
        offsets = np.r_[0, np.cumsum(block.lengths)]
        texts = [catalogue[i] if i >= 0 else block.fresh[-1 - i] for i in block.items.tolist()]
        users = block.first + np.arange(len(block.lengths))
        yield pa.table(
            {
                "user_id": pa.array([f"u{u}" for u in users.tolist()], pa.string()),
                "behavior_texts": list_array(offsets, pa.array(texts, pa.string())),
                "timestamps": list_array(offsets, pa.array(block.timestamps, pa.int64())),
                "age": pa.array(block.labels["age"], pa.int64()),
                "gender": pa.array(block.labels["gender"], pa.int64()),
            }
        )


def _assemble(world: World, blocks: list[Block]) -> BehaviorDataset:
    c = world.config
    catalogue, fresh_texts = len(world.catalogue), []
    ids = []
    for block in blocks:
        ids.append(np.where(block.items >= 0, block.items, catalogue + len(fresh_texts) - 1 - block.items))
        fresh_texts += block.fresh
    ids = np.concatenate(ids)
    ads = np.arange(c.num_ads)
    texts = np.array(world.catalogue + fresh_texts + world.ad_titles + world.ad_descriptions, dtype=object)
    title_ids = catalogue + len(fresh_texts) + ads
    description_ids = title_ids + c.num_ads
    # Each text once (titles may repeat by chance), then only the texts in use, in catalogue/fresh/ads order.
    codes, vocabulary = pd.factorize(texts)
    used = np.zeros(len(vocabulary), bool)
    for part in (ids, title_ids, description_ids):
        used[codes[part]] = True
    new_id = np.cumsum(used) - 1
    ids, title_ids, description_ids = (new_id[codes[part]] for part in (ids, title_ids, description_ids))
    vocabulary = vocabulary[used]
    lengths = np.concatenate([b.lengths for b in blocks])
    offsets = np.r_[0, np.cumsum(lengths)]
    labels = {name: np.concatenate([b.labels[name] for b in blocks]) for name in ("age", "gender")}
    users = users_dataset(
        [f"u{i}" for i in range(c.num_users)], offsets, ids, np.concatenate([b.timestamps for b in blocks]), labels
    )
    report = IngestReport(
        files=[f"<synthetic seed={c.seed}>"],
        rows_read=len(ids),
        events_read=len(ids),
        events_kept=len(ids),
        users_read=c.num_users,
        users_kept=c.num_users,
    )
    impressions = {
        k: np.concatenate([b.impressions[k] + (b.first if k == "user" else 0) for b in blocks])
        for k in ("user", "history_end", "ad", "label", "timestamp")
    }
    report.impressions_read = report.impressions_kept = len(impressions["user"])
    ctr = ctr_dataset_dict(
        {
            "user_index": impressions["user"],
            "history_end": impressions["history_end"],
            "ad_title_id": title_ids[impressions["ad"]],
            "ad_description_id": description_ids[impressions["ad"]],
            "label": impressions["label"],
            "timestamp": impressions["timestamp"],
        },
        split_by_time(impressions["timestamp"]),
    )
    report.notes.append(
        f"synthetic: {c.num_topics} topics, catalogue of {len(world.catalogue)} titles, "
        f"{c.num_ads} ads, {len(vocabulary)} distinct texts"
    )
    return BehaviorDataset(
        users=users,
        behaviors=[str(t) for t in vocabulary],
        report=report,
        ctr=ctr,
        label_classes={"age": list(AGE_CLASSES), "gender": list(GENDER_CLASSES)},
    )
