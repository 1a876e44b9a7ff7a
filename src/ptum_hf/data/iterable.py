"""Building a `datasets.IterableDataset` from a function yielding Arrow tables (fast: no per-row encoding)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import datasets
import numpy as np
import pyarrow as pa


def iterable_from_tables(
    generate_tables: Callable[..., Iterator[pa.Table]], gen_kwargs: dict, features: datasets.Features
) -> datasets.IterableDataset:
    """
    An `IterableDataset` over the rows of the tables `generate_tables(**gen_kwargs)` yields. List-valued
    `gen_kwargs` are split into shards (DataLoader workers), as with `IterableDataset.from_generator`.
    `generate_tables` must be a module-level function (picklable).
    """
    try:
        from datasets.iterable_dataset import ArrowExamplesIterable

        tables = ArrowExamplesIterable(functools.partial(_keyed, generate_tables), gen_kwargs)
        return datasets.IterableDataset(tables, info=datasets.DatasetInfo(features=features))
    except (ImportError, TypeError):  # another `datasets` layout: the slower, public road
        return datasets.IterableDataset.from_generator(
            functools.partial(_rows, generate_tables), features=features, gen_kwargs=gen_kwargs
        )


def _keyed(generate_tables, **kwargs):
    yield from enumerate(generate_tables(**kwargs))


def _rows(generate_tables, **kwargs):
    for table in generate_tables(**kwargs):
        yield from table.to_pylist()


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """A list column from flat values and offsets (one more than rows)."""
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, np.int32)), values)
