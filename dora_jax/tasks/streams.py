"""Prompt streams as grain datasets: seeded per-epoch shuffles, host shards, length-bucketed batches.

    stream = prompt_stream(rows, seed=0, shard=(jax.process_index(), jax.process_count()))
    batches = LengthBucketed(stream, length=lambda r: len(r["prompt_ids"]), batch_size=64, window=8, seed=0)
    batches[n]                                   # batch n, a pure function of (rows, seed, shard, n)
    prompt_BxP, mask_BxP = left_pad([r["prompt_ids"] for r in batches[n]], pad_id, multiple=64)

Every stage is a random-access `grain.MapDataset`, so the resumable iterator state is one
integer (the batch index, checkpointed with the trainer) and a restored run reads exactly the
batch it would have read next, mid-epoch or not.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import numpy as np


def prompt_stream(rows: Sequence[Any], seed: int, shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
    """An endless stream of `rows`: this host's shard (every count-th row), reshuffled each epoch from `seed`."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: need 0 <= index < count.")
    ds = grain.MapDataset.source(list(rows))[index::count]
    if len(ds) == 0:
        raise ValueError(f"{len(rows)} rows leave none for host {index} of {count}; use more rows or fewer hosts.")
    # shuffle before repeat: each epoch is a fresh permutation (grain derives it from seed and epoch).
    return ds.shuffle(seed=seed).repeat()


class LengthBucketed(grain.MapDataset):
    """Batches of similar length: each window of `window` batches is sorted by length, cut, and its batches shuffled.

    Padding is then set by the longest prompt among neighbours in length instead of the longest in a
    random batch, while the order of batches (and which prompts meet in a window) stays random.
    """

    def __init__(self, parent: grain.MapDataset, length: Callable[[Any], int], batch_size: int, window: int,
                 seed: int):
        super().__init__(parent)
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size={batch_size} and window={window} must be >= 1.")
        self._length, self._batch_size, self._window, self._seed = length, batch_size, window, seed
        self._sorted = (-1, [])  # (window, its items sorted by length): batches are read window by window

    def __len__(self) -> int:
        return len(self._parent) // self._batch_size

    def __getitem__(self, index: int) -> list:
        w, j = divmod(index, self._window)
        if self._sorted[0] != w:
            span = self._window * self._batch_size
            items = [self._parent[w * span + i] for i in range(span)]
            self._sorted = (w, sorted(items, key=self._length))  # stable: ties keep stream order
        batch = np.random.default_rng([self._seed, w]).permutation(self._window)[j]
        return self._sorted[1][batch * self._batch_size:(batch + 1) * self._batch_size]

    def __str__(self) -> str:
        return f"LengthBucketed(batch_size={self._batch_size}, window={self._window})"


def epoch_item(position: int, size: int, seed: int) -> int:
    """The index at `position` of an endless stream over `size` items, reshuffled each epoch from `seed`."""
    epoch, index = divmod(position, size)
    return int(np.random.default_rng([seed, epoch]).permutation(size)[index])


def left_pad(ids: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_BxP int32, mask_BxP int32), left-padded so every prompt ends at column P - 1.

    P is the longest prompt rounded up to `multiple`, so batches share a few compiled widths.
    """
    longest = max((len(x) for x in ids), default=0)
    P = -(-longest // multiple) * multiple
    prompt_BxP = np.full((len(ids), P), pad_id, np.int32)
    mask_BxP = np.zeros((len(ids), P), np.int32)
    for row, x in enumerate(ids):
        if len(x):
            prompt_BxP[row, P - len(x):] = x
            mask_BxP[row, P - len(x):] = 1
    return prompt_BxP, mask_BxP
