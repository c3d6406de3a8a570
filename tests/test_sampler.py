from collections import Counter

import pytest

from embed_lm.data.sampler import MixtureBatchSampler

SIZES = [100, 300]


def source_of(i):
    return 0 if i < SIZES[0] else 1


def test_single_source_batches_follow_the_ratios():
    sampler = MixtureBatchSampler([1000, 3000], [1, 3], batch_size=4, seed=0)
    kinds = Counter()
    for batch in sampler:
        sources = {0 if i < 1000 else 1 for i in batch}
        assert len(sources) == 1
        kinds[sources.pop()] += 1
    assert len(sampler) == 1000 and 0.2 < kinds[0] / 1000 < 0.3


def test_mixed_batches_when_asked():
    sampler = MixtureBatchSampler(SIZES, None, batch_size=16, single_source=False, seed=0)
    assert any(len({source_of(i) for i in b}) == 2 for b in sampler)


def test_deterministic_per_epoch_and_different_across_epochs():
    a, b = MixtureBatchSampler(SIZES, None, 8, seed=1), MixtureBatchSampler(SIZES, None, 8, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_ranks_split_one_global_batch():
    full = list(MixtureBatchSampler(SIZES, None, 8, seed=2))
    r0 = list(MixtureBatchSampler(SIZES, None, 4, seed=2, rank=0, world_size=2))
    r1 = list(MixtureBatchSampler(SIZES, None, 4, seed=2, rank=1, world_size=2))
    assert [x + y for x, y in zip(r0, r1)] == full


def test_resume_skips_the_batches_already_done():
    sampler = MixtureBatchSampler(SIZES, None, 8, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(epoch=2, batches_done=5)
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # the skip applies once


def test_every_example_is_seen_once_per_pass_of_its_source():
    sampler = MixtureBatchSampler([64], None, 8, seed=0)
    assert sorted(i for b in sampler for i in b) == list(range(64))


def test_bad_ratios_are_refused():
    with pytest.raises(ValueError, match="ratios"):
        MixtureBatchSampler(SIZES, [1.0], 8)
    with pytest.raises(ValueError, match="at least one example"):
        MixtureBatchSampler([10, 0], None, 8)
