"""The training order (`training.GlobalBatchSampler`) is built in optimiser steps of the global batch, so that one
process with batch B and n processes with batch B/n (with or without accumulation) train on the same examples in
every step. The ranks' shares come from accelerate's own `BatchSamplerShard`, the wrapper the Trainer puts around the
sampler under torchrun; `tests/test_distributed.py` checks the trained parameters through the CLI."""

from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
from torch.utils.data import BatchSampler

from varreason.training import GlobalBatchSampler

LENGTHS = [(i * 37) % 101 + 1 for i in range(100)]  # 100 examples: not a whole number of steps of 16 or 24


def steps_seen(size: int, processes: int, batch: int, accumulation: int, lengths, epochs: int = 2) -> list[list[int]]:
    """The examples of each optimiser step over all ranks (sorted), as the Trainer and accelerate deal them out."""
    global_batch = processes * batch * accumulation
    per_rank = []
    for rank in range(processes):
        sampler = GlobalBatchSampler(size, global_batch, seed=5, lengths=lengths)
        shard = BatchSamplerShard(BatchSampler(sampler, batch, drop_last=False), processes, rank, even_batches=True)
        micro = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # as the Trainer does before each epoch
            micro += list(shard)
        assert all(len(m) == batch for m in micro), "every micro-batch full"
        assert len(micro) % accumulation == 0, "no short accumulation step"
        per_rank.append(micro)
    assert len({len(m) for m in per_rank}) == 1, "every rank takes the same number of micro-batches"
    n_steps = len(per_rank[0]) // accumulation
    return [sorted(i for micro in per_rank for m in micro[s * accumulation:(s + 1) * accumulation] for i in m)
            for s in range(n_steps)]


@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["grouped", "random"])
@pytest.mark.parametrize("split", [(2, 8, 1), (2, 4, 2), (1, 8, 2), (4, 2, 2), (2, 12, 1), (3, 4, 2)])
def test_every_split_of_the_global_batch_trains_on_the_same_examples_in_every_step(lengths, split):
    processes, batch, accumulation = split
    global_batch = processes * batch * accumulation
    assert steps_seen(100, processes, batch, accumulation, lengths) == steps_seen(100, 1, global_batch, 1, lengths)


@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["grouped", "random"])
def test_the_last_step_of_an_epoch_is_filled_with_the_epochs_first_examples(lengths):
    sampler = GlobalBatchSampler(100, 16, seed=1, lengths=lengths)
    order = list(sampler)
    assert len(order) == len(sampler) == 112 and set(order) == set(range(100))  # every example, 12 of them twice
    assert sorted(Counter(order).values()) == [1] * 88 + [2] * 12
    assert all(len(set(order[s:s + 16])) == 16 for s in range(0, 112, 16)), "no example twice in one step"
    small = list(GlobalBatchSampler(5, 16, seed=1, lengths=lengths[:5] if lengths else None))
    assert len(small) == 16 and set(small) == set(range(5))  # fewer examples than a step: cycled


def test_without_grouping_the_order_is_accelerates_own_when_steps_are_whole():
    """group_by_length: false keeps the Trainer's order (accelerate's seedable sampler, seeded with data_seed), so runs
    whose data fill whole steps train exactly as before this sampler."""
    ours = GlobalBatchSampler(96, 16, seed=7)
    theirs = SeedableRandomSampler(range(96), data_seed=7)
    for epoch in range(3):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs)


def test_grouped_steps_are_length_sorted_so_each_micro_batch_is_a_slice_of_similar_lengths():
    order = list(GlobalBatchSampler(96, 16, seed=2, lengths=LENGTHS[:96]))
    steps = [[LENGTHS[i] for i in order[s:s + 16]] for s in range(0, 96, 16)]
    assert all(step == sorted(step) for step in steps)
    assert [max(s) for s in steps] != sorted(max(s) for s in steps), "steps in random order, not a sweep"
