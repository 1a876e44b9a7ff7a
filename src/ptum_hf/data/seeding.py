"""Reproducible batches: the random choices of a collator (masked slot, negatives) drawn from what the batch holds.

The same batch then gets the same examples in a DataLoader worker, after a resume, or in a second run.
"""

from __future__ import annotations

import torch


class UserRows(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` for a DataLoader, each tagged with its row number (`_index`) for a
    `SeededCollator`."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {**self.rows[int(index)], "_index": int(index)}


class SeededCollator:
    """Wraps a collator so that its randomness depends only on (seed, epoch, the batch's row numbers)."""

    def __init__(self, collator, seed: int):
        self.collator = collator
        self.seed = seed
        self.epoch = 0

    def __call__(self, features):
        indices = [feature.pop("_index") for feature in features]
        self.collator.reseed([self.seed, self.epoch, len(indices), *indices])
        return self.collator(features)
