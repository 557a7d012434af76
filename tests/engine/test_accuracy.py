"""Accuracy statistics: MetaOptNet CI form and paired tests against direct computations."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from metasparse.metrics.accuracy import episode_accuracy, format_ci, mean_ci, paired_difference


def test_episode_accuracy():
    logits = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(episode_accuracy(logits, labels), torch.tensor([2 / 3, 2 / 3]))


def test_mean_ci_metaoptnet_form():
    x = [0.5, 0.7, 0.9, 0.6]
    s = mean_ci(x)
    assert s["mean"] == pytest.approx(0.675)
    std = math.sqrt(sum((v - 0.675) ** 2 for v in x) / 4)  # population std, as np.std
    assert s["ci95"] == pytest.approx(1.96 * std / 2)
    assert format_ci(s) == f"{67.5:.2f} +- {1.96 * std / 2 * 100:.2f}"
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=50)
    b = a - 0.05 + 0.02 * rng.standard_normal(50)
    p = paired_difference(a, b)
    assert p["mean_diff"] == pytest.approx(np.mean(a - b))
    assert p["ci95"] == pytest.approx(1.96 * np.std(a - b) / math.sqrt(50))
    assert p["t_pvalue"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert p["t_pvalue"] < 1e-6
    same = paired_difference(a, a)
    assert same["mean_diff"] == 0 and same["t_pvalue"] == 1.0 and same["wilcoxon_pvalue"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        paired_difference(a, b[:3])
