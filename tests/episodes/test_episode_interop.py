"""learn2learn interop: tasksets become EpisodeBatches in the sampler's form (normalised float32).

The first tests drive ``taskset_episodes`` with a stand-in taskset that has the attributes it
reads from a learn2learn ``TaskDataset`` (so they run without learn2learn); the tests after
them use real learn2learn objects and skip when learn2learn (the ``[l2l]`` extra) is absent.
"""
import sys

import pytest
import torch

from episodes.interop import SourceDataset, benchmark_episodes, taskset_episodes, to_meta_dataset
from episodes.sampler import EpisodeSampler, make_batch
from episodes.sources import load_source
from episodes.sources.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD
from episodes.transforms import eval_transform


# ------------------------------------------------------------------ a stand-in taskset
class _Description:
    def __init__(self, index):
        self.index = index


class _MetaDataset:
    """What taskset_episodes reads of a learn2learn MetaDataset: ``dataset``, ``indices_to_labels``."""

    def __init__(self, dataset, labels):
        self.dataset = dataset
        self.indices_to_labels = {i: int(c) for i, c in enumerate(labels)}


class _Taskset:
    """A learn2learn-like TaskDataset over ``dataset`` (items ``(x, class id)``): ``way`` classes,
    ``per_class`` examples each, interleaved across classes (not class-major), labels remapped to
    0..way-1 in a shuffled order (as ``RemapLabels`` may)."""

    def __init__(self, dataset, labels, way, per_class, num_tasks=-1, seed=0):
        self.dataset = _MetaDataset(dataset, labels)
        self.labels = torch.as_tensor(labels)
        self.way, self.per_class, self.num_tasks = way, per_class, num_tasks
        self.g = torch.Generator().manual_seed(seed)
        self.sampled_descriptions = {}

    def sample_task_description(self):
        classes = self.labels.unique()
        chosen = classes[torch.randperm(classes.numel(), generator=self.g)[: self.way]]
        per = [torch.nonzero(self.labels == c).reshape(-1) for c in chosen]
        per = [p[torch.randperm(p.numel(), generator=self.g)[: self.per_class]] for p in per]
        order = torch.stack(per, 1).reshape(-1)                     # interleaved: c0, c1, ..., c0, c1, ...
        return [_Description(int(i)) for i in order]

    def get_task(self, desc):
        items = [self.dataset.dataset[d.index] for d in desc]
        ids = sorted({c for _, c in items})
        remap = dict(zip(ids, torch.randperm(len(ids), generator=self.g).tolist()))
        return torch.stack([x for x, _ in items]), torch.tensor([remap[c] for _, c in items])

    def __getitem__(self, i):
        if i not in self.sampled_descriptions:
            self.sampled_descriptions[i] = self.sample_task_description()
        return self.get_task(self.sampled_descriptions[i])


class _PlainDataset:
    """A dataset that is not one of ours (the statistics of its images are unknown)."""

    def __init__(self, data, labels):
        self.data, self.labels = data, labels

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def _reference(src, b):
    """The same episodes drawn through the package's own sampler path, transform 'eval'."""
    return make_batch(src, b.class_ids, b.support_index, b.query_index, eval_transform(src))


@pytest.mark.parametrize("num_tasks", [-1, 5])
def test_batches_are_the_samplers_form(make_images, num_tasks):
    src = make_images(n_classes=6, per_class=9, size=12)
    ts = _Taskset(SourceDataset(src), src.labels, way=3, per_class=2 + 3, num_tasks=num_tasks)
    batches = list(taskset_episodes(ts, 3, 2, 3, episodes_per_batch=2, n_batches=3))
    assert [b.n_episodes for b in batches] == ([2, 2, 2] if num_tasks == -1 else [2, 2, 1])
    mean = torch.tensor(src.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(src.std, dtype=torch.float64).view(-1, 1, 1)
    drawn = EpisodeSampler(src, 3, 2, 3, episodes_per_batch=2, seed=0, transform="eval").sample(0, 0)
    for b in batches:
        ref = _reference(src, b)
        assert b.support.dtype == b.query.dtype == drawn.support.dtype == torch.float32
        assert b.support.shape == (b.n_episodes, 6, 3, 12, 12) and b.query.shape == (b.n_episodes, 9, 3, 12, 12)
        assert torch.equal(b.support, ref.support) and torch.equal(b.query, ref.query)
        # closed form, in float64: (x / 255 - mean) / std of the source's images
        expected = ((src.data[b.support_index].double() / 255 - mean) / std).float()
        torch.testing.assert_close(b.support, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(src.labels[b.query_index], torch.gather(b.class_ids, 1, b.query_labels))
        assert torch.equal(b.support_labels[0], torch.arange(3).repeat_interleave(2))


def test_transform_none_keeps_the_raw_tensors(make_images):
    src = make_images(n_classes=5, per_class=6, size=8)
    ts = _Taskset(SourceDataset(src), src.labels, way=2, per_class=3)
    b = next(taskset_episodes(ts, 2, 1, 2, episodes_per_batch=3, transform=None))
    assert b.support.dtype == torch.uint8
    assert torch.equal(b.support, src.data[b.support_index]) and torch.equal(b.query, src.data[b.query_index])


def test_callable_transform_sees_the_batch_once(make_images):
    src = make_images(n_classes=5, per_class=6, size=8)
    ts = _Taskset(SourceDataset(src), src.labels, way=2, per_class=3)
    calls = []

    def halve(x):
        calls.append((tuple(x.shape), x.dtype))
        return x.float()[..., ::2, ::2] / 2

    b = next(taskset_episodes(ts, 2, 1, 2, episodes_per_batch=3, transform=halve))
    assert calls == [((3 * (2 + 4), 3, 8, 8), torch.uint8)]     # support and query together, as the sampler
    assert b.support.shape == (3, 2, 3, 4, 4) and b.query.shape == (3, 4, 3, 4, 4)
    assert torch.equal(b.query, src.data[b.query_index].float()[..., ::2, ::2] / 2)


def test_dataset_names_the_statistics(make_images):
    src = make_images(n_classes=5, per_class=6, size=8, name="cifar-fs")
    ts = _Taskset(_PlainDataset(src.data, src.labels), src.labels, way=2, per_class=3)
    with pytest.raises(ValueError, match="uint8 but their dataset is unknown: pass dataset="):
        next(taskset_episodes(ts, 2, 1, 2))
    b = next(taskset_episodes(ts, 2, 1, 2, dataset="mini-imagenet"))
    mean = torch.tensor(MINI_IMAGENET_MEAN, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(MINI_IMAGENET_STD, dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(b.support, ((src.data[b.support_index].double() / 255 - mean) / std).float())
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-1k'"):
        next(taskset_episodes(ts, 2, 1, 2, dataset="imagenet-1k"))


def test_float_images_need_transform_none(make_images):
    src = make_images(n_classes=4, per_class=5, size=8)
    data = src.data.float() / 255
    ts = _Taskset(_PlainDataset(data, src.labels), src.labels, way=2, per_class=3)
    with pytest.raises(ValueError, match=r"images are torch.float32, expected uint8 .* pass transform=None"):
        next(taskset_episodes(ts, 2, 1, 2, dataset="mini-imagenet"))
    b = next(taskset_episodes(ts, 2, 1, 2, transform=None))
    assert torch.equal(b.support, data[b.support_index])
    with pytest.raises(ValueError, match="transform must be 'eval', None or a callable, got 'train'"):
        next(taskset_episodes(ts, 2, 1, 2, transform="train"))


def test_vectors_come_out_float32(make_vectors):
    src = make_vectors(n_classes=5, per_class=6, dim=7)
    src.data = src.data.double()
    for dataset in (SourceDataset(src), _PlainDataset(src.data, src.labels)):
        b = next(taskset_episodes(_Taskset(dataset, src.labels, way=3, per_class=4), 3, 2, 2))
        assert b.support.dtype == torch.float32 and b.support.shape == (1, 6, 7)
        assert torch.equal(b.support, src.data[b.support_index].float())


def test_to_meta_dataset_without_learn2learn_names_the_extra(make_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "learn2learn", None)
    with pytest.raises(ImportError, match=r"to_meta_dataset needs learn2learn, not installed: "
                                          r"pip install 'metasparse\[l2l\]'"):
        to_meta_dataset(make_images())


# ------------------------------------------------------------------ real learn2learn objects
@pytest.fixture(scope="module")
def l2l():
    return pytest.importorskip("learn2learn", reason="needs learn2learn (pip install 'metasparse[l2l]')")


def _taskset(l2l, source, way, shot, query, num_tasks=-1):
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels
    meta = to_meta_dataset(source)
    return l2l.data.TaskDataset(meta, [NWays(meta, way), KShots(meta, shot + query), LoadData(meta),
                                       RemapLabels(meta)], num_tasks=num_tasks)


def test_learn2learn_imports(l2l):
    assert l2l.__version__.startswith("0.2")
    assert hasattr(l2l.data, "TaskDataset") and hasattr(l2l.data, "MetaDataset")


def test_source_as_meta_dataset(l2l, make_images):
    src = make_images(n_classes=5, per_class=7, first_class=30)
    meta = to_meta_dataset(src)
    assert isinstance(meta, l2l.data.MetaDataset) and len(meta) == len(src)
    assert sorted(meta.labels) == list(range(30, 35))
    for c, idx in meta.labels_to_indices.items():
        assert all(int(src.labels[i]) == c for i in idx) and len(idx) == 7
    x, y = meta[3]
    assert torch.equal(x, src.data[3]) and y == int(src.labels[3])


@pytest.mark.parametrize("num_tasks", [-1, 6])
def test_taskset_to_episodes(l2l, mini_metaoptnet, num_tasks):
    src = load_source("mini-imagenet", mini_metaoptnet[0], "val")
    ts = _taskset(l2l, src, way=3, shot=2, query=4, num_tasks=num_tasks)
    batches = list(taskset_episodes(ts, 3, 2, 4, episodes_per_batch=2, n_batches=3))
    assert len(batches) == 3
    for b in batches:
        assert b.support.shape == (2, 6, 3, 84, 84) and b.query.shape == (2, 12, 3, 84, 84)
        assert b.support.dtype == torch.float32                      # normalised, as the sampler's
        ref = _reference(src, b)
        assert torch.equal(b.support, ref.support) and torch.equal(b.query, ref.query)
        # class_ids are the source's original class ids although RemapLabels hid them
        assert torch.equal(src.labels[b.support_index], torch.gather(b.class_ids, 1, b.support_labels))
        assert torch.equal(src.labels[b.query_index], torch.gather(b.class_ids, 1, b.query_labels))
        assert set(b.class_ids.reshape(-1).tolist()) <= set(src.classes.tolist())
        for e in range(2):
            assert not set(b.support_index[e].tolist()) & set(b.query_index[e].tolist())
    if num_tasks != -1:          # cached tasks come back identically, and the iterator stops at num_tasks
        again = list(taskset_episodes(ts, 3, 2, 4, episodes_per_batch=4, transform=None))
        assert [b.n_episodes for b in again] == [4, 2]
        assert torch.equal(again[0].support_index[:2], batches[0].support_index)
        assert torch.equal(again[0].support[:2], src.data[batches[0].support_index])


def test_wrong_task_shape_is_explained(l2l, make_images):
    src = make_images()
    ts = _taskset(l2l, src, way=3, shot=2, query=2)
    with pytest.raises(ValueError, match=r"expected shot\+query=1\+2=3"):
        next(taskset_episodes(ts, 3, 1, 2))
    with pytest.raises(ValueError, match="3 classes, expected way=4"):
        next(taskset_episodes(ts, 4, 2, 2))


def test_benchmark_tasksets(l2l, make_images):
    sets = {s: make_images(split=s, first_class=k * 10, seed=k) for k, s in enumerate(("train", "val", "test"))}
    bt = l2l.vision.benchmarks.BenchmarkTasksets(_taskset(l2l, sets["train"], 3, 5, 2),
                                                 _taskset(l2l, sets["val"], 3, 1, 2),
                                                 _taskset(l2l, sets["test"], 3, 1, 2))
    its = benchmark_episodes(bt, 3, {"train": 5, "validation": 1, "test": 1}, 2, episodes_per_batch=2, n_batches=1)
    tr, te = next(its["train"]), next(its["test"])
    assert tr.support.shape[:2] == (2, 15) and te.support.shape[:2] == (2, 3)
    assert set(te.class_ids.reshape(-1).tolist()) <= set(range(20, 30))
    assert torch.equal(te.support, _reference(sets["test"], te).support)
    raw = next(benchmark_episodes(bt, 3, 1, 2, n_batches=1, transform=None)["validation"])
    assert raw.support.dtype == torch.uint8 and torch.equal(raw.support, sets["val"].data[raw.support_index])
