"""Grain prompt streams: per-epoch shuffles, disjoint host shards, length buckets, padding widths."""

import numpy as np
import pytest

from dora_jax.tasks.streams import LengthBucketed, left_pad, prompt_stream


def test_stream_reshuffles_each_epoch_and_is_a_function_of_the_seed():
    stream = prompt_stream(range(10), seed=3)
    epochs = [[stream[e * 10 + i] for i in range(10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert [prompt_stream(range(10), seed=3)[i] for i in range(30)] == sum(epochs, [])
    assert [prompt_stream(range(10), seed=4)[i] for i in range(10)] != epochs[0]


def test_host_shards_are_disjoint_and_cover_the_rows():
    shards = [{prompt_stream(range(11), seed=0, shard=(i, 3))[j] for j in range(4)} for i in range(3)]
    assert set().union(*shards) == set(range(11)) and sum(len(s) for s in shards) == 11
    with pytest.raises(ValueError, match="need 0 <= index < count"):
        prompt_stream(range(4), 0, shard=(3, 3))


def test_length_buckets_group_similar_lengths_and_keep_every_row():
    rows = [{"id": i, "n": int(n)} for i, n in enumerate(np.random.default_rng(0).integers(1, 200, 64))]
    batches = LengthBucketed(prompt_stream(rows, seed=1), lambda r: r["n"], batch_size=8, window=8, seed=1)
    first_epoch = [batches[b] for b in range(8)]
    assert sorted(r["id"] for b in first_epoch for r in b) == list(range(64))
    spread = np.mean([max(r["n"] for r in b) - min(r["n"] for r in b) for b in first_epoch])
    random_spread = np.mean([np.ptp([r["n"] for r in rows[i:i + 8]]) for i in range(0, 64, 8)])
    assert spread < random_spread / 3
    # Padding waste: bucketed batches pad far less than batches of the raw stream.
    waste = lambda bs: sum(max(r["n"] for r in b) * len(b) - sum(r["n"] for r in b) for b in bs)
    stream = prompt_stream(rows, seed=1)
    assert waste(first_epoch) < waste([[stream[b * 8 + i] for i in range(8)] for b in range(8)]) / 3
    # Random access: a restored index reads the same batch.
    again = LengthBucketed(prompt_stream(rows, seed=1), lambda r: r["n"], 8, 8, 1)
    assert [r["id"] for r in again[13]] == [r["id"] for r in batches[13]]


def test_left_pad_rounds_the_width_up():
    prompt, mask = left_pad([[5, 6, 7], [8]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(prompt, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert left_pad([[1] * 5], 0, multiple=4)[0].shape == (1, 8)
