"""Deferred augmentation (the device path): ``EpisodeSampler.sample_deferred`` + ``finish``
gives the batches of ``sample`` (same episodes, labels, indices; images equal up to float32
rounding) and the augmentation random numbers are drawn exactly as before.  (The stream that
uses it, and the no-host-sync check of ``augment``: tests/engine/test_workers.py.)"""
import pytest
import torch

from episodes.sampler import EpisodeDataset, EpisodeSampler, EpochKeys, can_defer
from episodes.transforms import MetaOptNetTrainTransform, train_transform
from episodes.types import DeferredBatch


def _same_episodes(a, b):
    for name in ("support_labels", "query_labels", "class_ids", "support_index", "query_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("size", [84, 32])
def test_deferred_matches_standard_path(make_images, seed, size):
    name = "mini-imagenet" if size == 84 else "cifar-fs"
    src = make_images(n_classes=8, per_class=10, size=size, name=name)
    s = EpisodeSampler(src, way=5, shot=3, query=2, episodes_per_batch=3, seed=seed, transform="train")
    for epoch, i in [(0, 0), (0, 5), (3, 2)]:
        ref = s.sample(epoch, i)
        raw = s.sample_deferred(epoch, i)
        assert isinstance(raw, DeferredBatch) and raw.images.dtype == torch.uint8
        assert raw.images.shape == (3 * 5 * (3 + 2), 3, size, size)
        assert torch.equal(raw.images, src.data[torch.cat([ref.support_index.reshape(-1),
                                                           ref.query_index.reshape(-1)])])
        got = raw.finish(s.transform)                       # whole-batch (accelerator) code path on CPU
        _same_episodes(ref, got)
        assert got.support.shape == ref.support.shape and got.query.shape == ref.query.shape
        torch.testing.assert_close(got.support, ref.support, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.query, ref.query, atol=1e-5, rtol=0)


def test_deferred_params_are_the_standard_draws(make_images):
    """The parameters come from the batch generator right after the episode draw, as in ``sample``."""
    src = make_images(n_classes=8, per_class=10, size=32, name="cifar-fs")
    s = EpisodeSampler(src, 4, 2, 2, 2, seed=3, transform="train")
    g = s.generator(1, 4)
    s.sample_indices(1, 4, generator=g)
    expected = s.transform.sample_params(2 * 4 * 4, g)
    raw = s.sample_deferred(1, 4)
    for name in ("top", "left", "flip", "factors", "order"):
        assert torch.equal(getattr(raw.params, name), getattr(expected, name)), name


@pytest.mark.parametrize("transform", ["eval", None])
def test_parameter_free_transforms_defer(make_images, transform):
    src = make_images(n_classes=6, per_class=8, size=16)
    s = EpisodeSampler(src, 3, 2, 1, 2, seed=0, transform=transform)
    assert can_defer(s.transform)
    ref, got = s.sample(0, 1), s.sample_deferred(0, 1).finish(s.transform)
    _same_episodes(ref, got)
    assert torch.equal(ref.support, got.support) and torch.equal(ref.query, got.query)


def test_vector_source_defers(make_vectors):
    s = EpisodeSampler(make_vectors(), 3, 2, 2, 2, seed=0, transform="train")
    ref, got = s.sample(0, 0), s.sample_deferred(0, 0).finish(s.transform)
    _same_episodes(ref, got)
    assert torch.equal(ref.support, got.support) and got.support.dtype == torch.float32


def test_custom_callable_cannot_defer(make_images):
    s = EpisodeSampler(make_images(), 3, 2, 1, 2, transform=lambda x, generator=None: x.float())
    assert not can_defer(s.transform)
    with pytest.raises(ValueError, match="cannot be deferred"):
        s.sample_deferred(0, 0)


def test_deferred_batch_movement(make_images):
    s = EpisodeSampler(make_images(), 3, 2, 1, 2, seed=0, transform="train")
    raw = s.sample_deferred(0, 0)
    moved = raw.to("cpu")
    assert moved.params is raw.params and torch.equal(moved.images, raw.images) and moved.n_episodes == 2


def test_augment_on_device_matches_cpu_path():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    t = MetaOptNetTrainTransform((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 84)
    images = torch.randint(0, 256, (64, 3, 84, 84), dtype=torch.uint8)
    params = t.sample_params(64, torch.Generator().manual_seed(0))
    got = t.augment(images.cuda(), params).cpu()
    torch.testing.assert_close(got, t(images, params=params), atol=1e-5, rtol=0)


def test_epoch_keys_and_tuple_items(make_images):
    s = EpisodeSampler(make_images(), 3, 2, 1, 2, seed=0, transform="train")
    keys = EpochKeys(5, epoch=2, start=3)
    assert list(keys) == [(2, 3), (2, 4)] and len(keys) == 2
    keys.set_epoch(4)
    assert list(keys)[0] == (4, 0) and len(keys) == 5
    with pytest.raises(ValueError):
        keys.set_epoch(0, 6)
    ds = EpisodeDataset(s, 5, epoch=0)
    assert torch.equal(ds[(2, 3)].support, s.sample(2, 3).support)
    assert isinstance(EpisodeDataset(s, 5, deferred=True)[(2, 3)], DeferredBatch)
    with pytest.raises(IndexError):
        ds[(0, 5)]
