"""learn2learn interop with real learn2learn objects."""
import learn2learn as l2l
import pytest
import torch
from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

from episodes.interop import benchmark_episodes, taskset_episodes, to_meta_dataset
from episodes.sources import load_source


def test_learn2learn_imports():
    assert l2l.__version__.startswith("0.2")
    assert hasattr(l2l.data, "TaskDataset") and hasattr(l2l.data, "MetaDataset")


def _taskset(source, way, shot, query, num_tasks=-1):
    meta = to_meta_dataset(source)
    return l2l.data.TaskDataset(meta, [NWays(meta, way), KShots(meta, shot + query), LoadData(meta),
                                       RemapLabels(meta)], num_tasks=num_tasks)


def test_source_as_meta_dataset(make_images):
    src = make_images(n_classes=5, per_class=7, first_class=30)
    meta = to_meta_dataset(src)
    assert isinstance(meta, l2l.data.MetaDataset) and len(meta) == len(src)
    assert sorted(meta.labels) == list(range(30, 35))
    for c, idx in meta.labels_to_indices.items():
        assert all(int(src.labels[i]) == c for i in idx) and len(idx) == 7
    x, y = meta[3]
    assert torch.equal(x, src.data[3]) and y == int(src.labels[3])


@pytest.mark.parametrize("num_tasks", [-1, 6])
def test_taskset_to_episodes(mini_metaoptnet, num_tasks):
    src = load_source("mini-imagenet", mini_metaoptnet[0], "val")
    ts = _taskset(src, way=3, shot=2, query=4, num_tasks=num_tasks)
    batches = list(taskset_episodes(ts, 3, 2, 4, episodes_per_batch=2, n_batches=3))
    assert len(batches) == 3
    for b in batches:
        assert b.support.shape == (2, 6, 3, 84, 84) and b.query.shape == (2, 12, 3, 84, 84)
        assert torch.equal(b.support, src.data[b.support_index]) and torch.equal(b.query, src.data[b.query_index])
        # class_ids are the source's original class ids although RemapLabels hid them
        assert torch.equal(src.labels[b.support_index], torch.gather(b.class_ids, 1, b.support_labels))
        assert torch.equal(src.labels[b.query_index], torch.gather(b.class_ids, 1, b.query_labels))
        assert set(b.class_ids.reshape(-1).tolist()) <= set(src.classes.tolist())
        for e in range(2):
            assert not set(b.support_index[e].tolist()) & set(b.query_index[e].tolist())
    if num_tasks != -1:          # cached tasks come back identically, and the iterator stops at num_tasks
        again = list(taskset_episodes(ts, 3, 2, 4, episodes_per_batch=4))
        assert [b.n_episodes for b in again] == [4, 2]
        assert torch.equal(again[0].support_index[:2], batches[0].support_index)


def test_wrong_task_shape_is_explained(make_images):
    src = make_images()
    ts = _taskset(src, way=3, shot=2, query=2)
    with pytest.raises(ValueError, match=r"expected shot\+query=1\+2=3"):
        next(taskset_episodes(ts, 3, 1, 2))
    with pytest.raises(ValueError, match="3 classes, expected way=4"):
        next(taskset_episodes(ts, 4, 2, 2))


def test_benchmark_tasksets(make_images):
    sets = {s: make_images(split=s, first_class=k * 10, seed=k) for k, s in enumerate(("train", "val", "test"))}
    bt = l2l.vision.benchmarks.BenchmarkTasksets(_taskset(sets["train"], 3, 5, 2), _taskset(sets["val"], 3, 1, 2),
                                                 _taskset(sets["test"], 3, 1, 2))
    its = benchmark_episodes(bt, 3, {"train": 5, "validation": 1, "test": 1}, 2, episodes_per_batch=2, n_batches=1)
    tr, te = next(its["train"]), next(its["test"])
    assert tr.support.shape[:2] == (2, 15) and te.support.shape[:2] == (2, 3)
    assert set(te.class_ids.reshape(-1).tolist()) <= set(range(20, 30))
