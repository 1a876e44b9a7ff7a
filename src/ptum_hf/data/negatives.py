"""Negative sampling for the pre-training tasks (MBP, NBP)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WEIGHTINGS = ("occurrence", "uniform")


@dataclass
class NegativeSampler:
    """
    Draws negative behaviors from a pool of behavior ids, vectorised.

    With `weighting="occurrence"` (the paper's choice) the pool holds the behavior of every event of the corpus, so a
    behavior is drawn as often as it occurs; with `"uniform"` it holds each distinct behavior once.

    Rules for a positive of user u: a negative never equals the positive (hard rule); a negative that is one of u's
    own behaviors (those the collator looked at) is redrawn for `soft_rounds` rounds, so negatives are other users'
    behaviors whenever the pool allows. If no behavior other than the positive exists, the example is impossible.
    """

    pool: np.ndarray
    weighting: str = "occurrence"
    soft_rounds: int = 8
    hard_rounds: int = 8
    _distinct: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        self.pool = np.asarray(self.pool)
        if self.pool.ndim != 1 or not len(self.pool):
            raise ValueError("the negative pool must be a non-empty 1-D array of behavior ids")

    @classmethod
    def from_dataset(cls, dataset, weighting: str = "occurrence") -> NegativeSampler:
        """From a `BehaviorDataset`, a `UserSequences`, or a users `datasets.Dataset`."""
        from .dataset import BehaviorDataset, UserSequences

        if isinstance(dataset, BehaviorDataset):
            dataset = dataset.sequences()
        elif not isinstance(dataset, UserSequences):
            dataset = UserSequences.from_dataset(dataset)
        pool = dataset.behavior_ids.astype(np.int32 if dataset.behavior_ids.max(initial=0) < 2**31 else np.int64)
        if weighting == "uniform":
            pool = np.unique(pool)
        return cls(pool=pool, weighting=weighting)

    @property
    def distinct(self) -> np.ndarray:
        if self._distinct is None:
            self._distinct = np.unique(self.pool).astype(np.int64)
        return self._distinct

    def sample(
        self,
        positives: np.ndarray,
        num: int,
        rng: np.random.Generator,
        owners: np.ndarray | None = None,
        own_keys: np.ndarray | None = None,
        key_base: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        `num` negatives for each positive: (negatives (R, num) int64, impossible (R,) bool).

        `owners[r]` is the batch row of positive r's user and `own_keys` the sorted `row * key_base + behavior_id`
        keys of each user's own behaviors (for the soft rule); leave them None to skip it.
        """
        return sample_negatives(
            self.pool,
            positives,
            num,
            rng,
            owners,
            own_keys,
            key_base,
            self.soft_rounds,
            self.hard_rounds,
            lambda: self.distinct,
        )


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique for int arrays via a sort (faster than numpy's hash-based unique on small batches)."""
    values = np.sort(values, axis=None)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def is_member(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_keys) for sorted unique keys, by binary search."""
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


def sample_negatives(
    pool, positives, num, rng, owners=None, own_keys=None, key_base=0, soft_rounds=8, hard_rounds=8, distinct=None
):
    """The sampler's rules on any pool (used directly for in-batch sampling). See `NegativeSampler`."""
    positives = np.asarray(positives, np.int64)
    negatives = pool[rng.integers(0, len(pool), (len(positives), num))].astype(np.int64)
    for round_ in range(soft_rounds + hard_rounds):
        bad = negatives == positives[:, None]
        if round_ < soft_rounds and own_keys is not None and len(own_keys):
            bad |= is_member(owners[:, None] * key_base + negatives, own_keys)
        if not bad.any():
            break
        negatives[bad] = pool[rng.integers(0, len(pool), int(bad.sum()))]
    bad = negatives == positives[:, None]
    impossible = np.zeros(len(positives), bool)
    if bad.any():
        # Rare (a pool dominated by the positive): draw among the distinct other behaviors instead.
        choices = distinct() if distinct is not None else unique_sorted(pool).astype(np.int64)
        rows, cols = np.nonzero(bad)
        at = np.searchsorted(choices, positives[rows])
        present = (at < len(choices)) & (choices[np.minimum(at, len(choices) - 1)] == positives[rows])
        others = len(choices) - present
        impossible[rows[others == 0]] = True
        draw = (rng.random(len(rows)) * np.maximum(others, 1)).astype(np.int64)
        draw += present & (draw >= at)  # skip the positive's own slot
        negatives[rows, cols] = choices[np.minimum(draw, len(choices) - 1)]
    return negatives, impossible
