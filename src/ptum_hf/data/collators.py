"""
Collators turning users (rows of `BehaviorDataset.users`) or CTR impressions into the batches PTUM models take.

Every batch holds a table of its UNIQUE behaviors, tokenized once:
    `behavior_input_ids`, `behavior_attention_mask`: LongTensor (M, L), padded with the tokenizer's pad id to the
    longest behavior of the batch (at most `max_tokens`).
Everything else points at rows of that table. A history is
    `*history_indices`: LongTensor (B, N), oldest first, the most recent `max_behaviors` behaviors, right-padded
        with -1 (the masked MBP slot holds -2);
    `*history_time_gaps`: FloatTensor (B, N), seconds from each behavior to the last behavior of that history
        (>= 0; 0 at padding).

Rows may hold `behavior_ids` (needs a `BehaviorTokenCache`) or, from `stream_behavior_log`, `behavior_texts`
(needs a `tokenizer`; texts are deduplicated and tokenized per batch). Other columns are ignored. With the HF
`Trainer`, pass `remove_unused_columns=False` so it keeps `behavior_ids` and `timestamps`.

Collators are picklable (DataLoader workers). Randomness comes from a numpy generator seeded by `seed`; inside a
DataLoader worker it is reseeded from the worker's torch seed (different per worker and epoch, reproducible under
`torch.manual_seed`).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from ..modeling_ptum import IGNORE_INDEX, MASK_INDEX, PAD_INDEX
from ..processing_ptum import history_windows
from .dataset import BehaviorDataset, UserSequences, columns
from .negatives import NegativeSampler, sample_negatives, unique_sorted
from .tokenization import BehaviorTokenCache, gather_ragged, pad_token_id_of, text_hashes, tokenize

NEGATIVE_SAMPLING = ("occurrence", "uniform", "batch")
TRAINER_HINT = " (with the HF Trainer, pass TrainingArguments(remove_unused_columns=False))"


@dataclass
class _Events(UserSequences):
    """A batch's users as `UserSequences`; in text mode the ids index `texts`, this batch's own vocabulary."""

    texts: np.ndarray | None = None
    pool: np.ndarray | None = None  # text mode: ids of the recent-texts buffer


@dataclass
class BehaviorCollatorBase:
    """Shared parts: reading rows, history windows, the unique-behavior table. Not used directly."""

    token_cache: BehaviorTokenCache | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    max_behaviors: int = 100
    max_tokens: int = 30
    seed: int | None = None
    id_buckets: int = 0  # PTUMConfig.behavior_id_buckets: > 0 adds `behavior_bucket_ids`
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False, compare=False)
    _rng_owner: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.token_cache is None and self.tokenizer is None:
            raise ValueError("pass token_cache (rows with behavior_ids) or tokenizer (rows with behavior_texts)")
        if self.max_behaviors < 1:
            raise ValueError(f"max_behaviors must be >= 1, got {self.max_behaviors}")
        if self.id_buckets < 0:
            raise ValueError(f"id_buckets must be >= 0 (0: none), got {self.id_buckets}")

    @classmethod
    def from_dataset(
        cls,
        dataset: BehaviorDataset,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int = 30,
        token_cache: BehaviorTokenCache | None = None,
        **kwargs,
    ):
        """The collator for `dataset`: its token cache (unless given) and what the task reads from the dataset
        (`from_dataset_defaults`); `kwargs` set the other fields and override those defaults."""
        if token_cache is None:
            token_cache = BehaviorTokenCache.build(dataset.behaviors, tokenizer, max_tokens)
        kwargs = {**cls.from_dataset_defaults(dataset, kwargs), **kwargs}
        return cls(token_cache=token_cache, tokenizer=tokenizer, max_tokens=max_tokens, **kwargs)

    @classmethod
    def from_dataset_defaults(cls, dataset: BehaviorDataset, kwargs: dict) -> dict:
        """Fields a subclass takes from the dataset (only those `kwargs` do not set)."""
        return {}

    # -- randomness -------------------------------------------------------------------------------------------
    def generator(self) -> np.random.Generator:
        """This process's generator: from `seed` in the main process, from the worker's torch seed in a worker."""
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.seed)
        if self._rng is None or self._rng_owner != owner:
            if info is None:
                self._rng = np.random.default_rng(self.seed) if self._rng is None else self._rng
            else:
                self._rng = np.random.default_rng([self.seed or 0, info.seed % 2**63])
            self._rng_owner = owner
        return self._rng

    def reseed(self, entropy) -> None:
        """Draw this process's next random choices from `np.random.default_rng(entropy)` (see `SeededCollator`)."""
        info = torch.utils.data.get_worker_info()
        self._rng = np.random.default_rng(entropy)
        self._rng_owner = (os.getpid(), None if info is None else info.seed)

    # -- rows -------------------------------------------------------------------------------------------------
    def read_users(self, features: Sequence[dict], keep: int, pool_texts: Sequence[str] = ()) -> _Events:
        """The last `keep` behaviors (ids or texts) and times of each row, checked and flattened."""
        if not features:
            raise ValueError("empty batch")
        first = features[0]
        text_mode = "behavior_ids" not in first
        key = "behavior_texts" if text_mode else "behavior_ids"
        if key not in first or "timestamps" not in first:
            raise KeyError(
                f"rows need 'behavior_ids' (or 'behavior_texts') and 'timestamps'; got {sorted(first)}{TRAINER_HINT}"
            )
        if text_mode and self.tokenizer is None:
            raise ValueError("rows hold behavior_texts: pass tokenizer= to the collator")
        if not text_mode and self.token_cache is None:
            raise ValueError("rows hold behavior_ids: pass token_cache= to the collator")
        values = [f[key][-keep:] for f in features]
        times = [f["timestamps"][-keep:] for f in features]
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        bad = (lengths == 0) | (lengths != np.fromiter(map(len, times), np.int64, len(times)))
        if bad.any():
            row = features[int(np.argmax(bad))]
            raise ValueError(
                f"user {row.get('user_id', '?')!r} has no behaviors or {key} and timestamps differ in length"
            )
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_times = np.fromiter(itertools.chain.from_iterable(times), np.int64, int(offsets[-1]))
        decreasing = np.diff(flat_times) < 0
        decreasing[offsets[1:-1] - 1] = False  # a step between two users is fine
        if decreasing.any():
            row = features[int(np.searchsorted(offsets, np.argmax(decreasing) + 1, "right") - 1)]
            raise ValueError(
                f"user {row.get('user_id', '?')!r}: timestamps are not in time order (read_behavior_log sorts them)"
            )
        if not text_mode:
            flat = np.fromiter(itertools.chain.from_iterable(values), np.int64, int(offsets[-1]))
            return _Events(flat, flat_times, offsets)
        texts = np.fromiter(itertools.chain.from_iterable(values), object, int(offsets[-1]))
        codes, vocabulary = pd.factorize(np.concatenate([texts, np.asarray(list(pool_texts), dtype=object)]))
        return _Events(
            codes[: len(texts)].astype(np.int64),
            flat_times,
            offsets,
            np.asarray(vocabulary, object),
            codes[len(texts) :].astype(np.int64),
        )

    def vocabulary_size(self, events: _Events) -> int:
        return len(events.texts) if events.texts is not None else len(self.token_cache)

    @staticmethod
    def windows(events: _Events, starts: np.ndarray, ends: np.ndarray, max_behaviors: int):
        """(ids (B, N) with -1 padding, time gaps (B, N) float32, lengths (B,)) of events [starts, ends), keeping
        the last `max_behaviors`; the reference time is the last event of each window. The rule lives in
        `processing_ptum.history_windows`, which ships with checkpoints, so inference from raw events matches."""
        return history_windows(events.behavior_ids, events.timestamps, starts, ends, max_behaviors)

    def behavior_table(self, events: _Events, *referenced: np.ndarray):
        """(table of unique behavior ids, input_ids (M, L), attention_mask (M, L)) over every id >= 0 referenced."""
        table = unique_sorted(np.concatenate([r[r >= 0].ravel() for r in referenced]))
        if events.texts is None:
            input_ids, mask = self.token_cache.gather(table)
            return table, input_ids, mask
        tokens = tokenize(self.tokenizer, events.texts[table].tolist(), self.max_tokens)
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        offsets = np.zeros(len(tokens) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(tokens), np.int64, int(offsets[-1]))
        input_ids, mask = gather_ragged(flat, offsets, np.arange(len(tokens)), pad_token_id_of(self.tokenizer))
        return table, input_ids, mask

    def table_inputs(self, events: _Events, *referenced: np.ndarray):
        """(table, the batch's behavior inputs): `behavior_input_ids`, `behavior_attention_mask` (M, L) and, with
        `id_buckets`, `behavior_bucket_ids` (M,): each behavior's id bucket (its text's hash modulo `id_buckets`)."""
        table, input_ids, mask = self.behavior_table(events, *referenced)
        inputs = {"behavior_input_ids": input_ids, "behavior_attention_mask": mask}
        if self.id_buckets:
            if events.texts is None:
                inputs["behavior_bucket_ids"] = self.token_cache.bucket_ids(table, self.id_buckets)
            else:
                hashes = text_hashes(events.texts[table].tolist())
                inputs["behavior_bucket_ids"] = (hashes % np.uint64(self.id_buckets)).astype(np.int64)
        return table, inputs

    @staticmethod
    def rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Behavior ids -> rows of the table; negative markers (-1, -2) stay."""
        return np.where(ids >= 0, np.searchsorted(table, np.maximum(ids, 0)), ids)


def _tensors(**arrays) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}


@dataclass
class PretrainingCollator(BehaviorCollatorBase):
    """
    One MBP (masked behavior prediction) and one NBP (next K behaviors prediction) example per user.

    Batch (besides the behavior table):
        `mbp_history_indices`, `mbp_history_time_gaps` (B, N1): the user's last `max_behaviors` behaviors, one slot
            (uniformly chosen) holding -2, the masked behavior;
        `mbp_candidate_indices` (B, P+1): the masked behavior and P negatives, in random order;
        `mbp_labels` (B,): position of the masked behavior among the candidates; -100 if the user has < 2 behaviors
            (then nothing is masked);
        `nbp_history_indices`, `nbp_history_time_gaps` (B, N2): the last `max_behaviors` behaviors before the next
            ones. Rule: with n behaviors, k = min(K, n - 1) are predicted and the history is the first n - k, so it
            is never empty (n = 2, K = 2: history 1 behavior, only k = 0 predicted);
        `nbp_candidate_indices` (B, K, P+1), `nbp_labels` (B, K): for the k-th next behavior (k = 0 first after the
            history), it and P negatives in random order, and its position; -100 where unavailable.
    Candidates of a -100 example point at row 0 (valid, ignored by the loss).
    With `bag_dropout` (`PTUMConfig.use_bag`), also bag prediction: `bag_history_indices`, `bag_history_time_gaps`
        (B, N1): the MBP window unmasked, each behavior hidden (-1) with probability `bag_dropout` (at least one
        stays); `bag_target_indices` (B, N1): every behavior of the window (-1 padding).

    Negatives (see `NegativeSampler`): `negative_sampling="occurrence"` (default, the paper's: any event of the corpus,
    via `negative_sampler`), `"uniform"` (distinct behaviors), or `"batch"` (the other users' events in the
    batch). Never the positive; the user's own behaviors are avoided. Rows with `behavior_texts` draw corpus
    negatives from a buffer of the last `text_buffer_size` texts seen (this batch included).

    Example:

    ```python
    >>> collator = PretrainingCollator.from_dataset(data, tokenizer, seed=0)
    >>> batch = collator([data.users[i] for i in range(32)])
    ```
    """

    negative_sampler: NegativeSampler | None = None
    num_negatives: int = 4
    num_next: int = 2
    negative_sampling: str = "occurrence"
    text_buffer_size: int = 100_000
    bag_dropout: float | None = None
    _buffer: deque | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.bag_dropout is not None and not 0.0 <= self.bag_dropout < 1.0:
            raise ValueError(f"bag_dropout must be in [0, 1) or None, got {self.bag_dropout!r}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {self.negative_sampling!r}")
        if self.num_negatives < 1 or self.num_next < 1:
            raise ValueError("num_negatives and num_next must be >= 1")
        sampler = self.negative_sampler
        if sampler is not None and self.negative_sampling != "batch" and sampler.weighting != self.negative_sampling:
            raise ValueError(
                f"negative_sampling={self.negative_sampling!r} but the negative_sampler was built with "
                f"weighting={sampler.weighting!r}"
            )

    @classmethod
    def from_dataset_defaults(cls, dataset: BehaviorDataset, kwargs: dict) -> dict:
        """The corpus negative sampler of `dataset`."""
        weighting = kwargs.get("negative_sampling", "occurrence")
        if "negative_sampler" in kwargs or weighting == "batch":
            return {}
        return {"negative_sampler": NegativeSampler.from_dataset(dataset, weighting)}

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        K, P = self.num_next, self.num_negatives
        text_mode = "behavior_ids" not in features[0]
        if text_mode and self._buffer is None:
            self._buffer = deque(maxlen=self.text_buffer_size)
        events = self.read_users(features, self.max_behaviors + K, self._buffer if text_mode else ())
        rng = self.generator()
        B, n, starts = len(features), events.lengths, events.offsets[:-1]
        users = np.arange(B)

        # MBP: mask one slot of the last max_behaviors behaviors.
        mbp_ids, mbp_gaps, width = self.windows(events, starts, starts + n, self.max_behaviors)
        window = mbp_ids.copy()
        mbp_ok = n >= 2
        slot = (rng.random(B) * width).astype(np.int64)
        mbp_positive = mbp_ids[users, slot]
        mbp_ids[users[mbp_ok], slot[mbp_ok]] = MASK_INDEX

        # NBP: predict the next k = min(K, n - 1) behaviors from the n - k before them.
        available = np.clip(n - 1, 0, K)
        cut = starts + n - available
        nbp_ids, nbp_gaps, _ = self.windows(events, starts, cut, self.max_behaviors)
        has_next = np.arange(K) < available[:, None]
        next_index = np.minimum(cut[:, None] + np.arange(K), len(events.behavior_ids) - 1)
        next_ids = np.where(has_next, events.behavior_ids[next_index], PAD_INDEX)

        positives = np.concatenate([mbp_positive[mbp_ok], next_ids[has_next]])
        owners = np.concatenate([users[mbp_ok], np.nonzero(has_next)[0]])
        negatives, impossible = self.negatives(events, positives, owners, rng)
        candidates, labels = _place(positives, negatives, rng)
        labels[impossible] = IGNORE_INDEX
        bag = self.bag_view(window, width, mbp_gaps, rng) if self.bag_dropout is not None else {}

        mbp_candidates = np.zeros((B, P + 1), np.int64)
        mbp_labels = np.full(B, IGNORE_INDEX, np.int64)
        count = int(mbp_ok.sum())
        mbp_candidates[mbp_ok], mbp_labels[mbp_ok] = candidates[:count], labels[:count]
        nbp_candidates = np.zeros((B, K, P + 1), np.int64)
        nbp_labels = np.full((B, K), IGNORE_INDEX, np.int64)
        nbp_candidates[has_next], nbp_labels[has_next] = candidates[count:], labels[count:]

        table, inputs = self.table_inputs(events, mbp_ids, nbp_ids, positives, negatives)
        mbp_candidates = np.where(mbp_labels[:, None] >= 0, self.rows(table, mbp_candidates), 0)
        nbp_candidates = np.where(nbp_labels[..., None] >= 0, self.rows(table, nbp_candidates), 0)
        if text_mode:
            self._buffer.extend(events.texts[events.behavior_ids].tolist())
        return _tensors(
            **inputs,
            mbp_history_indices=self.rows(table, mbp_ids),
            mbp_history_time_gaps=mbp_gaps,
            mbp_candidate_indices=mbp_candidates,
            mbp_labels=mbp_labels,
            nbp_history_indices=self.rows(table, nbp_ids),
            nbp_history_time_gaps=nbp_gaps,
            nbp_candidate_indices=nbp_candidates,
            nbp_labels=nbp_labels,
            **{key: self.rows(table, value) if key != "bag_history_time_gaps" else value for key, value in bag.items()},
        )

    def bag_view(self, window: np.ndarray, width: np.ndarray, gaps: np.ndarray, rng) -> dict[str, np.ndarray]:
        """Bag prediction: the window with each behavior hidden (-1) with probability `bag_dropout` (the most recent
        one stays when all would go), and every behavior of the window as a target. Ids; rows are taken later."""
        valid = window >= 0
        hide = valid & (rng.random(window.shape) < self.bag_dropout)
        nothing_left = ~(valid & ~hide).any(1)
        hide[np.nonzero(nothing_left)[0], np.maximum(width[nothing_left] - 1, 0)] = False
        return {
            "bag_history_indices": np.where(hide, PAD_INDEX, window),
            "bag_history_time_gaps": gaps,
            "bag_target_indices": window,
        }

    def negatives(self, events: _Events, positives, owners, rng):
        """(R, P) negatives for the positives, and which ones are impossible (no other behavior to draw)."""
        key_base = self.vocabulary_size(events)
        own_keys = unique_sorted(
            np.repeat(np.arange(len(events.lengths)), events.lengths) * key_base + events.behavior_ids
        )
        args = dict(num=self.num_negatives, rng=rng, owners=owners, own_keys=own_keys, key_base=key_base)
        if self.negative_sampling == "batch":
            return sample_negatives(events.behavior_ids, positives, **args)
        if events.texts is not None:  # streaming: the buffer of recent texts plus this batch
            pool = np.concatenate([events.pool, events.behavior_ids])
            return sample_negatives(
                unique_sorted(pool) if self.negative_sampling == "uniform" else pool, positives, **args
            )
        if self.negative_sampler is None:
            raise ValueError(
                "no corpus to draw negatives from: pass negative_sampler=NegativeSampler.from_dataset(data) (or use "
                "PretrainingCollator.from_dataset), or negative_sampling='batch'"
            )
        return self.negative_sampler.sample(positives, **args)


def _place(positives: np.ndarray, negatives: np.ndarray, rng: np.random.Generator):
    """Candidates (R, P+1): the negatives with the positive inserted at a uniformly random position; positions."""
    R, P = negatives.shape
    position = rng.integers(0, P + 1, R)
    columns = np.arange(P + 1)
    source = np.minimum(columns - (columns > position[:, None]), P - 1)
    candidates = negatives[np.arange(R)[:, None], source]
    candidates[np.arange(R), position] = positives
    return candidates, position.astype(np.int64)


@dataclass
class UserCollator(BehaviorCollatorBase):
    """
    Users for inference (embeddings, predictions): `history_indices`, `history_time_gaps` (B, N): each user's last
    `max_behaviors` behaviors, with the behavior table. `histories` gives the same windows over the whole vocabulary
    instead (row = behavior id), for a table of behavior vectors encoded once.
    """

    def histories(self, features: Sequence[dict]) -> tuple[_Events, np.ndarray, np.ndarray]:
        """(events, behavior ids (B, N) with -1 padding, time gaps (B, N)): the windows every user model sees."""
        events = self.read_users(features, self.max_behaviors)
        ids, gaps, _ = self.windows(events, events.offsets[:-1], events.offsets[1:], self.max_behaviors)
        return events, ids, gaps

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        events, ids, gaps = self.histories(features)
        table, inputs = self.table_inputs(events, ids)
        return _tensors(
            **inputs,
            history_indices=self.rows(table, ids),
            history_time_gaps=gaps,
        )


@dataclass
class DemographicsCollator(UserCollator):
    """
    User-level classification (e.g. age and gender): the `UserCollator` batch, and `labels` LongTensor (B, H), one
    column per name of `label_names` in that order, -100 where the user's label is missing (None or negative).
    """

    label_names: Sequence[str] = ("age", "gender")

    @classmethod
    def from_dataset_defaults(cls, dataset: BehaviorDataset, kwargs: dict) -> dict:
        """Every label column of `dataset`."""
        return {} if "label_names" in kwargs else {"label_names": tuple(dataset.label_classes)}

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        return {**super().__call__(features), "labels": torch.from_numpy(self.labels(features))}

    def labels(self, features: Sequence[dict]) -> np.ndarray:
        missing = [name for name in self.label_names if name not in features[0]]
        if missing:
            raise KeyError(f"rows lack label column(s) {missing}; they have {sorted(features[0])}")
        values = np.array([[_label(f[name]) for name in self.label_names] for f in features], np.int64)
        return values.reshape(len(features), len(self.label_names))


def _label(value) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value < 0:
        return IGNORE_INDEX
    return int(value)


@dataclass
class CTRCollator(BehaviorCollatorBase):
    """
    CTR impressions (rows of `BehaviorDataset.ctr[split]`: `user_index`, `history_end`, `ad_title_id`,
    `ad_description_id`, `label`) -> `history_indices`, `history_time_gaps` (B, N): the user's last `max_behaviors`
    behaviors before the impression; `ad_title_indices`, `ad_description_indices` (B,) rows of the behavior table
    (-1: no description); `labels` FloatTensor (B,) of 0/1. With `user_id_buckets` (`PTUMConfig.user_id_buckets`)
    and `user_ids` (one per user index), `user_bucket_ids` (B,): each user id's hash modulo `user_id_buckets`.
    """

    sequences: UserSequences | None = None
    user_ids: Sequence[str] | None = field(default=None, repr=False)
    user_id_buckets: int = 0
    _user_buckets: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.sequences is None or self.token_cache is None:
            raise ValueError("CTRCollator needs sequences= (dataset.sequences()) and token_cache=")
        buckets = self.user_id_buckets
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
            raise ValueError(f"user_id_buckets must be an integer >= 0 (0: none), got {buckets!r}")
        if self.user_id_buckets:
            if self.user_ids is None or len(self.user_ids) != len(self.sequences):
                raise ValueError(
                    f"user_id_buckets needs user_ids= (one id per user of sequences, {len(self.sequences)}); got "
                    f"{None if self.user_ids is None else len(self.user_ids)}"
                )
            bad = next((u for u in self.user_ids if not isinstance(u, str)), None)
            if bad is not None:  # the datasets' ids are text: 1 and "1" must not be two users
                raise ValueError(f"user_ids must be strings (the dataset's user_id column); got {bad!r}")
            hashes = text_hashes(list(self.user_ids)) % np.uint64(self.user_id_buckets)
            self._user_buckets = hashes.astype(np.int64)

    @classmethod
    def from_dataset_defaults(cls, dataset: BehaviorDataset, kwargs: dict) -> dict:
        """The users' sequences, which impressions point into (and their ids, for `user_id_buckets`)."""
        defaults = {} if "sequences" in kwargs else {"sequences": dataset.sequences()}
        if kwargs.get("user_id_buckets") and "user_ids" not in kwargs:
            defaults["user_ids"] = columns(dataset.users, "user_id")[0].tolist()  # plain: it goes to every worker
        return defaults

    def id_bias_targets(self, impressions) -> dict[str, torch.Tensor]:
        """`PTUMForCTR.fit_id_biases`' arguments for `impressions` (a CTR split: columns `label`, `ad_title_id`,
        `user_index`): `labels`, and each impression's ad title id bucket (with `id_buckets`) and user id bucket (with
        `user_id_buckets`), bucketed as the batches are."""
        labels, titles, users = columns(impressions, "label", "ad_title_id", "user_index")
        targets = {"labels": labels.astype(np.float32)}
        if self.id_buckets:
            targets["ad_bucket_ids"] = self.token_cache.bucket_ids(titles.astype(np.int64), self.id_buckets)
        if self._user_buckets is not None:
            targets["user_bucket_ids"] = self._user_buckets[users.astype(np.int64)]
        return _tensors(**targets)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        names = ("user_index", "history_end", "ad_title_id", "ad_description_id", "label")
        missing = [name for name in names if name not in features[0]]
        if missing:
            raise KeyError(f"CTR rows need {missing}; got {sorted(features[0])}{TRAINER_HINT}")
        column = {name: np.array([f[name] for f in features], np.int64) for name in names[:-1]}
        users, ends = column["user_index"], column["history_end"]
        seq = self.sequences
        if users.min() < 0 or users.max() >= len(seq):
            raise IndexError(f"user_index outside 0..{len(seq) - 1}")
        lengths = seq.lengths[users]
        if (ends < 1).any() or (ends > lengths).any():
            bad = int(np.argmax((ends < 1) | (ends > lengths)))
            raise ValueError(f"history_end {ends[bad]} is outside 1..{lengths[bad]} for user_index {users[bad]}")
        events = _Events(seq.behavior_ids, seq.timestamps, seq.offsets)
        starts = seq.offsets[users]
        ids, gaps, _ = self.windows(events, starts, starts + ends, self.max_behaviors)
        titles, descriptions = column["ad_title_id"], column["ad_description_id"]
        table, inputs = self.table_inputs(events, ids, titles, descriptions)
        if self._user_buckets is not None:
            inputs["user_bucket_ids"] = self._user_buckets[users]
        return _tensors(
            **inputs,
            history_indices=self.rows(table, ids),
            history_time_gaps=gaps,
            ad_title_indices=self.rows(table, titles),
            ad_description_indices=self.rows(table, descriptions),
            labels=np.array([f["label"] for f in features], np.float32),
        )
