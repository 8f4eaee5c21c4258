"""The multi-task mixture: seeded, process-count independent, resumable; and collation."""
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unio.data.collate import bucket, collate
from unio.data.mixture import ExampleDataset, Mixture, RankBatchSampler
from unio.errors import DataError


class Finite(list):
    """A source of n samples ({"i": index})."""

    def __init__(self, n):
        super().__init__({"i": i} for i in range(n))


class Endless:
    endless = True

    def __len__(self):
        return 2 ** 31 - 1

    def __getitem__(self, i):
        return {"i": i}


def _mixture(batch=8, seed=0):
    return Mixture([Finite(5), Endless()], [{"caption": 1, "vqa": 3}, {"detect": 1}], [1, 3],
                   seed=seed, batch_size=batch)


def _key(d):
    return d.step, d.slot, d.source, d.task, d.index


def test_same_seed_same_draws_and_other_seed_differs():
    a = [_key(d) for _ in range(5) for d in _mixture().next_batch()]
    b = [_key(d) for _ in range(5) for d in _mixture().next_batch()]
    c = [_key(d) for _ in range(5) for d in _mixture(seed=1).next_batch()]
    assert a == b and a != c


def test_weights_are_respected():
    mix = _mixture(batch=1000)
    draws = [d for _ in range(10) for d in mix.next_batch()]
    by_source = Counter(d.source for d in draws)
    assert by_source[1] / len(draws) == pytest.approx(0.75, abs=0.02)
    tasks0 = Counter(d.task for d in draws if d.source == 0)
    assert tasks0["vqa"] / sum(tasks0.values()) == pytest.approx(0.75, abs=0.03)


def test_finite_source_sees_every_sample_once_per_epoch():
    mix = Mixture([Finite(7)], [{"caption": 1}], seed=3, batch_size=7)
    epochs = [[d.index for d in mix.next_batch()] for _ in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch


def test_endless_source_counts_up():
    mix = Mixture([Endless()], [{"detect": 1}], seed=0, batch_size=4)
    assert [d.index for d in mix.next_batch() + mix.next_batch()] == list(range(8))


@pytest.mark.parametrize("world, accum", [(1, 1), (1, 4), (2, 1), (2, 2), (4, 2)])
def test_ranks_partition_the_same_global_batch(world, accum):
    """Whatever the number of processes and accumulation steps, step s trains on the same samples."""
    reference = [[_key(d) for d in _mixture(batch=16).next_batch()] for _ in range(1)]
    per_step = {}
    for rank in range(world):
        sampler = RankBatchSampler(_mixture(batch=16), rank=rank, world_size=world, grad_accum=accum, steps=3)
        assert len(sampler) == 3 * accum
        for micro in sampler:
            assert len(micro) == 16 // world // accum
            for d in micro:
                per_step.setdefault(d.step, []).append(_key(d))
    assert sorted(per_step[0]) == sorted(reference[0])
    assert len(per_step) == 3 and all(len(v) == 16 for v in per_step.values())


def test_batch_must_divide():
    with pytest.raises(DataError, match="batch_size 10 must be divisible by processes x gradient accumulation"):
        RankBatchSampler(_mixture(batch=10), rank=0, world_size=4, grad_accum=1, steps=1)


def test_resume_from_state_continues_the_same_stream():
    mix = _mixture()
    for _ in range(4):
        mix.next_batch()
    state = mix.state_after(3)  # position after three batches
    rest = [[_key(d) for d in mix.next_batch()] for _ in range(3)]
    resumed = _mixture()
    resumed.load_state_dict(state)
    assert resumed.step == 3
    again = [[_key(d) for d in resumed.next_batch()] for _ in range(4)]
    assert again[1:] == rest


def test_resume_refuses_other_batch_size():
    state = _mixture(batch=8).state_dict()
    with pytest.raises(DataError, match="batch_size 8, the recipe has 16"):
        _mixture(batch=16).load_state_dict(state)


def test_example_dataset_falls_back_and_skips_bad_records():
    class Flaky(Finite):
        def __getitem__(self, i):
            if i % 2:
                raise DataError(f"record {i} is broken")
            return super().__getitem__(i)

    mix = Mixture([Flaky(50)], [{"caption": 1}], seed=0, batch_size=20)
    odd_draws = [d for d in mix.next_batch() if d.index % 2]
    make = lambda task, sample, rng: ("built", sample["i"])  # noqa: E731
    with pytest.raises(DataError, match="is broken"):
        ExampleDataset(mix, make)[odd_draws[0]]
    ds = ExampleDataset(mix, make, skip_bad=True)
    out = [ds[d] for d in odd_draws]
    assert all(i % 2 == 0 for _, i in out) and ds.skipped >= len(odd_draws)
    assert out == [ds[d] for d in odd_draws]  # the fallback is deterministic
    # a task no sample can serve: a clear error instead of an endless search
    never = ExampleDataset(mix, lambda task, sample, rng: None, skip_bad=True)
    with pytest.raises(DataError, match="task 'caption' could not be built from data.train\\[0\\]"):
        never[odd_draws[0]]


def test_mixture_rejects_bad_weights():
    with pytest.raises(DataError, match="tasks must map task names to positive weights"):
        Mixture([Finite(3)], [{"caption": 0}], batch_size=2)
    with pytest.raises(DataError, match="has no samples"):
        Mixture([Finite(0)], [{"caption": 1}], batch_size=2)


# ----------------------------------------------------------------------------- collate
class _Vocab:
    pad_id = 0


class _Ex:
    def __init__(self, ids, labels, image=True, weights=None, patch_mask=None, task="caption"):
        self.input_ids, self.labels, self.label_weights, self.task = ids, labels, weights, task
        self.image = Image.new("RGB", (16, 16), (255, 0, 0)) if image else None
        self.patch_mask = patch_mask


def test_collate_pads_to_buckets_and_masks():
    pm = np.zeros((2, 2), bool)
    pm[0, 1] = True
    batch = collate([_Ex([5, 6, 1], [7, 1], weights=[0.5, 1.0]), _Ex([5] * 9 + [1], [8, 9, 10, 1], image=False),
                     _Ex([4, 1], [1], patch_mask=pm)], _Vocab(), pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (3, 16) and batch["labels"].shape == (3, 8)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["input_ids"][0, 3:].eq(0).all()
    assert batch["labels"][0].tolist() == [7, 1] + [-100] * 6
    assert batch["label_weights"][0].tolist() == [0.5, 1.0] + [0.0] * 6
    assert batch["label_weights"][1, :4].eq(1).all()
    assert batch["has_image"].tolist() == [True, False, True]
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["pixel_values"][1].eq(0).all()
    assert batch["pixel_values"][0, 0].eq(1).all()  # red in [-1, 1]
    assert batch["patch_mask"].shape == (3, 2, 2) and batch["patch_mask"][2, 0, 1] and not batch["patch_mask"][0].any()


def test_collate_text_only_and_inference():
    batch = collate([_Ex([3, 1], [], image=False)], _Vocab())
    assert batch["pixel_values"] is None and batch["has_image"] is None and batch["labels"] is None
    assert bucket(1, 8) == 8 and bucket(9, 8) == 16 and bucket(0, 8) == 8


def test_collate_checks_weights():
    from unio.errors import InputError
    with pytest.raises(InputError, match="2 labels but 1 label weights"):
        collate([_Ex([1], [2, 1], weights=[1.0])], _Vocab())


def test_collate_for_training_always_carries_image_and_patch_mask():
    """Every parameter must take part in every step on every rank (ZeRO reduces gradients in
    buckets), so a training batch without images or masked patches still carries both."""
    batch = collate([_Ex([3, 1], [5, 1], image=False)], _Vocab(), image_size=16, patch_size=8)
    assert batch["pixel_values"].shape == (1, 3, 16, 16) and batch["has_image"].tolist() == [False]
    assert batch["patch_mask"].shape == (1, 2, 2) and not batch["patch_mask"].any()
    from unio.errors import InputError
    with pytest.raises(InputError, match="must share the input size"):
        collate([_Ex([3, 1], [5, 1])], _Vocab(), image_size=32, patch_size=8)
