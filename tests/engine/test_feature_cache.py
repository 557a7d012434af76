"""Embed once, compare many: the entries of one checkpoint are evaluated on features embedded
once per episode, with the same numbers as evaluating each entry on its own, a memory bound
and a fallback that says so."""
import numpy as np
import pytest
import torch

from metasparse.engine.compare import Entry, compare_entries
from metasparse.engine.evaluate import embed_episodes, evaluate_episodes, evaluate_features, parse_cache_size
from metasparse.heads import GroupSparseSVMHead, SVMHead

from .helpers import tiny_model, tiny_streams

CPU = torch.device("cpu")
RATIOS = (0.0, 0.2, 0.8)


class CountingBackbone(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += x.shape[0]
        return self.inner(x)


def _setup():
    model = tiny_model(seed=1)
    model.backbone = CountingBackbone(model.backbone)
    _, val = tiny_streams(val=10)          # 10 episodes in batches of 4 (the last one short)
    entries = [Entry(f"r={r}", model, GroupSparseSVMHead(lambda_ratio=r)) for r in RATIOS]
    entries.append(Entry("svm", model, SVMHead()))
    return model, val, entries


def _examples(val):
    return sum(b.support.shape[0] * (b.support.shape[1] + b.query.shape[1]) for b in val)


def test_a_lambda_sweep_embeds_each_episode_once_with_identical_results():
    model, val, entries = _setup()
    cached = compare_entries(entries, {2: val}, CPU, progress=False)
    assert model.backbone.calls == _examples(val)                   # once per example, not once per entry
    assert cached["feature_cache"]["2"][0]["entries"] == len(entries)
    model.backbone.calls = 0
    plain = compare_entries(entries, {2: val}, CPU, progress=False, feature_cache=0)
    assert model.backbone.calls == len(entries) * _examples(val)
    assert plain["feature_cache"]["2"] == [None]
    for a, b in zip(cached["shots"]["2"], plain["shots"]["2"]):
        assert a == b                                               # every number, to the last bit
    used = [r["features_used_fraction"] for r in cached["shots"]["2"][:len(RATIOS)]]
    assert used == sorted(used, reverse=True) and used[0] > used[-1]   # the sweep does sweep


def test_features_equal_evaluate_episodes_for_one_head():
    model, val, _ = _setup()
    head = GroupSparseSVMHead(lambda_ratio=0.1)
    cache = embed_episodes(model, val, CPU, progress=False)
    a = evaluate_features(head, cache, CPU, progress=False)
    b = evaluate_episodes(model, val, CPU, head=head, progress=False)
    for k in ("accuracy", "unused_fraction", "feature_usage", "loss", "rel_gap", "converged"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_memory_bound_falls_back_with_one_line():
    model, val, entries = _setup()
    said = []
    res = compare_entries(entries[:2], {2: val}, CPU, progress=False, feature_cache=1000, log=said.append)
    assert res["feature_cache"]["2"] == [None] and len(said) == 1
    assert "exceed the feature cache bound" in said[0] and "once per head" in said[0]
    ref = compare_entries(entries[:2], {2: val}, CPU, progress=False, feature_cache=0)
    assert res["shots"] == ref["shots"]


def test_cache_size_parsing():
    assert parse_cache_size("auto") is None and parse_cache_size(None) is None
    assert parse_cache_size("off") == 0 and parse_cache_size("0") == 0
    assert parse_cache_size("512MB") == 512_000_000 and parse_cache_size("2GiB") == 2 * 2 ** 30
    with pytest.raises(ValueError, match="--feature-cache"):
        parse_cache_size("lots")
