"""Episode sampler: shapes, disjointness, labels, split classes, reproducibility, workers, errors."""
import pytest
import torch

from episodes.sampler import EpisodeSampler, batch_seed, episode_loader
from episodes.sources import load_source
from episodes.types import EpisodeBatch


def _check_batch(b: EpisodeBatch, src, way, shot, query, n_ep):
    assert b.support.shape[:2] == (n_ep, way * shot) and b.query.shape[:2] == (n_ep, way * query)
    assert b.support_labels.dtype == torch.int64 and b.class_ids.shape == (n_ep, way)
    expected_s = torch.arange(way).repeat_interleave(shot)
    expected_q = torch.arange(way).repeat_interleave(query)
    split_classes = set(src.classes.tolist())
    for e in range(n_ep):
        assert torch.equal(b.support_labels[e], expected_s) and torch.equal(b.query_labels[e], expected_q)
        cls = b.class_ids[e].tolist()
        assert len(set(cls)) == way and set(cls) <= split_classes           # N distinct classes of this split
        s_idx, q_idx = b.support_index[e].tolist(), b.query_index[e].tolist()
        assert len(set(s_idx) | set(q_idx)) == way * (shot + query)          # disjoint, no repeats
        # every example's true class is the class behind its episode label
        assert torch.equal(src.labels[b.support_index[e]], b.class_ids[e][b.support_labels[e]])
        assert torch.equal(src.labels[b.query_index[e]], b.class_ids[e][b.query_labels[e]])


def test_raw_batch_shapes_and_content(make_images):
    src = make_images(n_classes=10, per_class=12, size=16)
    s = EpisodeSampler(src, way=5, shot=3, query=4, episodes_per_batch=6, seed=1)
    b = s.sample(0, 0)
    _check_batch(b, src, 5, 3, 4, 6)
    assert b.support.dtype == torch.uint8 and b.support.shape[2:] == (3, 16, 16)
    assert torch.equal(b.support, src.data[b.support_index]) and torch.equal(b.query, src.data[b.query_index])


@pytest.mark.parametrize("dataset,fixture", [("mini-imagenet", "mini_metaoptnet"), ("mini-imagenet", "mini_l2l"),
                                             ("cifar-fs", "cifar_pickles"), ("fc100", "cifar_pickles"),
                                             ("cifar-fs", "cifarfs_folders")])
def test_real_format_episodes_per_split(request, dataset, fixture):
    root = request.getfixturevalue(fixture)[0]
    train_classes = set(load_source(dataset, root, "train").classes.tolist())
    for split in ("val", "test"):
        src = load_source(dataset, root, split)
        b = EpisodeSampler(src, 5, 2, 3, 4, seed=0, transform="eval").sample(0, 3)
        _check_batch(b, src, 5, 2, 3, 4)
        assert not set(b.class_ids.reshape(-1).tolist()) & train_classes
        assert b.support.dtype == torch.float32 and b.support.shape[2] == 3


def test_pure_function_of_seed_epoch_index(make_images):
    src = make_images()
    a = EpisodeSampler(src, 4, 2, 2, 3, seed=7, transform="train")
    b = EpisodeSampler(src, 4, 2, 2, 3, seed=7, transform="train")
    later = [b.sample(0, i) for i in range(3)]
    assert torch.equal(a.sample(0, 2).support, later[2].support)            # order of calls is irrelevant
    assert torch.equal(a.sample(0, 2).support_index, later[2].support_index)
    assert not torch.equal(a.sample(0, 1).support_index, a.sample(0, 2).support_index)
    assert not torch.equal(a.sample(1, 2).support_index, a.sample(0, 2).support_index)
    c = EpisodeSampler(src, 4, 2, 2, 3, seed=8)
    assert not torch.equal(c.sample(0, 2).support_index, a.sample(0, 2).support_index)


def test_batch_seed_is_fixed():
    # pinned values: a change of the hash would silently change every saved experiment
    from episodes.sampler import _splitmix64
    assert _splitmix64(0) == 0xE220A8397B1DCDAF               # first SplitMix64 output for state 0 (Vigna)
    assert [batch_seed(0, 0, 0), batch_seed(1, 2, 3), batch_seed(2 ** 70, -1, 5)] == [
        1279368494785126216, 7510213797696614745, 8631133743404783499]
    assert len({batch_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}) == 27
    assert 0 <= batch_seed(2 ** 70, -1, 5) < 2 ** 63


def test_episodes_are_pinned(make_images):
    # "same seed, same episodes on any machine": the exact indices of one batch (torch's CPU generator
    # is platform independent); a change here changes every experiment's episodes
    src = make_images(n_classes=8, per_class=10, size=4)
    cls, sup, qry = EpisodeSampler(src, 3, 2, 1, 2, seed=5).sample_indices(1, 4)
    assert cls.tolist() == [[2, 6, 0], [6, 4, 5]]
    assert sup.tolist() == [[17, 13, 75, 58, 31, 55], [58, 75, 20, 62, 47, 35]]
    assert qry.tolist() == [[70, 3, 10], [50, 73, 2]]


def test_same_episodes_across_worker_counts(make_images):
    src = make_images(n_classes=8, per_class=10, size=12)
    kw = dict(way=3, shot=2, query=2, episodes_per_batch=2, n_batches=5, seed=3, transform="train")
    b0 = list(episode_loader(src, num_workers=0, **kw))
    b2 = list(episode_loader(src, num_workers=2, pin_memory=torch.cuda.is_available(), **kw))
    assert len(b0) == len(b2) == 5
    for x, y in zip(b0, b2):
        assert isinstance(y, EpisodeBatch)
        for f in ("support", "query", "support_labels", "query_labels", "class_ids", "support_index", "query_index"):
            assert torch.equal(getattr(x, f).cpu(), getattr(y, f).cpu()), f


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_changes_batches(make_images, workers):
    src = make_images()
    kw = dict(persistent_workers=True) if workers else {}
    loader = episode_loader(src, 3, 1, 1, 2, n_batches=2, seed=0, num_workers=workers, **kw)
    e0 = [b.support_index for b in loader]
    loader.dataset.set_epoch(1)
    e1 = [b.support_index for b in loader]
    assert not torch.equal(e0[0], e1[0])
    sampler = loader.dataset.sampler
    assert torch.equal(e0[1], sampler.sample(0, 1).support_index)
    assert torch.equal(e1[1], sampler.sample(1, 1).support_index)      # persistent workers saw the new epoch


def test_sampling_covers_classes_and_examples_uniformly(make_images):
    src = make_images(n_classes=6, per_class=8, size=4)
    s = EpisodeSampler(src, 2, 1, 1, 50, seed=0)
    counts = torch.zeros(len(src))
    cls_counts = torch.zeros(6)
    for i in range(40):
        b = s.sample(0, i)
        counts += torch.bincount(torch.cat([b.support_index, b.query_index], 1).reshape(-1), minlength=len(src))
        cls_counts += torch.bincount(b.class_ids.reshape(-1), minlength=6)
    # each example is used with prob 2*(2/6)/8 per episode -> expectation 2000*(1/12)=166.7 uses
    assert counts.min() > 110 and counts.max() < 230
    assert cls_counts.min() > 570 and cls_counts.max() < 765                 # expectation 4000/6 = 666.7, sd ~24


def test_vector_source_and_per_split_shots(make_vectors):
    src = make_vectors(split="test")
    s = EpisodeSampler(src, 3, {"train": 5, "test": 1}, {"train": 6, "test": 2}, 4, seed=0, transform="train")
    b = s.sample(0, 0)
    assert s.shot == 1 and s.query == 2
    assert b.support.shape == (4, 3, 5) and b.query.shape == (4, 6, 5) and b.support.dtype == torch.float32
    assert torch.equal(b.support, src.data[b.support_index])


def test_pin_memory_and_to():
    x = EpisodeBatch(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3),
                     torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    y = x.to("cpu")
    assert y.support_index is None and torch.equal(y.support, x.support)
    if torch.cuda.is_available():
        assert x.pin_memory().support.is_pinned()


# -- errors --------------------------------------------------------------------------------------

def test_way_larger_than_classes(make_images):
    with pytest.raises(ValueError, match=r"mini-imagenet/train: way N=11 exceeds the 10 classes"):
        EpisodeSampler(make_images(), 11, 1, 1)


def test_class_with_too_few_examples(make_images):
    src = make_images(n_classes=4, counts=[10, 10, 4, 10], first_class=20)
    with pytest.raises(ValueError, match=r"class 22 has 4 examples, fewer than K\+Q=3\+2=5"):
        EpisodeSampler(src, 2, 3, 2)


@pytest.mark.parametrize("kw,match", [(dict(way=0), r"way \(N\) must be a positive integer, got 0"),
                                      (dict(shot=0), r"shot \(K\) must be a positive integer, got 0"),
                                      (dict(shot=-1), r"shot \(K\) must be a positive integer, got -1"),
                                      (dict(query=0), r"query \(Q\) must be a positive integer, got 0"),
                                      (dict(shot=1.5), r"shot \(K\) must be a positive integer, got 1.5"),
                                      (dict(shot={"val": 1}), r"not for split 'train'")])
def test_non_positive_sizes(make_images, kw, match):
    args = dict(way=2, shot=1, query=1)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(make_images(), **args)


def test_synthetic_through_load_source_and_loader():
    src = load_source("synthetic", None, "validation", seed=0, n_classes=(8, 6, 7), examples_per_class=10,
                      n_factors=4, factors_per_class=2)
    assert src.split == "val" and not src.is_image and src.data.dtype == torch.float32
    b = next(iter(episode_loader(src, 5, 2, 3, 2, n_batches=1, seed=0, transform="train")))
    _check_batch(b, src, 5, 2, 3, 2)
    assert torch.equal(b.support, src.data[b.support_index])


def test_support_and_query_are_contiguous(make_images):
    b = EpisodeSampler(make_images(), 3, 2, 2, 4, seed=0, transform="train").sample(0, 0)
    assert b.support.is_contiguous() and b.query.is_contiguous()
    assert b.support.shape == (4, 6, 3, 16, 16) and b.query.shape == (4, 6, 3, 16, 16)


def test_source_to_device_keeps_sampling_identical(make_images):
    src = make_images()
    a = EpisodeSampler(src, 3, 2, 2, 2, seed=4, transform="train").sample(0, 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b = EpisodeSampler(src.to(dev), 3, 2, 2, 2, seed=4, transform="train").sample(0, 1)
    assert b.support.device.type == dev
    torch.testing.assert_close(a.support, b.support.cpu(), atol=1e-5, rtol=0)
    assert torch.equal(a.query_index, b.query_index)
