"""Fixed evaluation episodes: round trip, identical batches, mismatch errors, atomic writes."""
import json
import os

import pytest
import torch

from episodes.fixed import FixedEpisodes, load_episodes, sample_fixed_episodes, save_episodes
from episodes.sampler import EpisodeSampler


@pytest.mark.parametrize("ext", [".json", ".pt"])
def test_round_trip_and_same_batches(tmp_path, make_images, ext):
    src = make_images(split="test")
    ep = sample_fixed_episodes(src, way=4, shot=2, query=3, n_episodes=7, seed=11)
    path = tmp_path / f"episodes{ext}"
    save_episodes(path, ep)
    assert os.listdir(tmp_path) == [path.name]                        # atomic: no temp file left
    back = load_episodes(path, src)
    for k in ("dataset", "split", "way", "shot", "query", "n_examples", "labels_sha1"):
        assert getattr(back, k) == getattr(ep, k)
    for k in ("class_ids", "support_index", "query_index"):
        assert torch.equal(getattr(back, k), getattr(ep, k))
    batches = list(back.batches(src, episodes_per_batch=3, transform="eval"))
    assert [b.n_episodes for b in batches] == [3, 3, 1]
    b = batches[1]
    assert torch.equal(b.support_index, ep.support_index[3:6])
    assert torch.equal(src.labels[b.query_index], torch.gather(b.class_ids, 1, b.query_labels))
    raw = list(back.batches(src, episodes_per_batch=7))[0]
    assert torch.equal(raw.support, src.data[ep.support_index]) and raw.support.dtype == torch.uint8


def test_fixed_episodes_equal_sampler_episodes(make_images):
    src = make_images()
    ep = sample_fixed_episodes(src, 3, 1, 2, n_episodes=4, seed=5)
    s = EpisodeSampler(src, 3, 1, 2, 1, seed=5)
    for e in range(4):
        assert torch.equal(ep.support_index[e], s.sample(0, e).support_index[0])
    again = FixedEpisodes.from_batches([s.sample(0, e) for e in range(4)], src)
    assert torch.equal(again.query_index, ep.query_index)


def test_mismatching_source_is_refused(tmp_path, make_images):
    src = make_images(split="test")
    path = tmp_path / "ep.json"
    save_episodes(path, sample_fixed_episodes(src, 3, 1, 1, 2))
    with pytest.raises(ValueError, match=r"ep\.json: episodes were saved for mini-imagenet/test \(n=120\), not mini-imagenet/val"):
        load_episodes(path, make_images(split="val"))
    with pytest.raises(ValueError, match="labels_sha1 mismatch"):
        load_episodes(path, make_images(split="test", seed=1))
    with pytest.raises(ValueError, match="not cifar-fs/test"):
        list(load_episodes(path).batches(make_images(split="test", name="cifar-fs"), 2))


def test_bad_files(tmp_path, make_images):
    with pytest.raises(FileNotFoundError, match="missing.json: episode file not found"):
        load_episodes(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json: not a readable episode file"):
        load_episodes(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="other.json: not a metasparse-episodes/1 file"):
        load_episodes(tmp_path / "other.json")
    ep = sample_fixed_episodes(make_images(), 3, 1, 1, 2)
    with pytest.raises(ValueError, match="must end in .json or .pt"):
        save_episodes(tmp_path / "ep.txt", ep)
    doc_path = tmp_path / "ep.json"
    save_episodes(doc_path, ep)
    doc = json.loads(doc_path.read_text())
    doc["shot"] = 5
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="do not match way=3 shot=5 query=1"):
        load_episodes(doc_path)
