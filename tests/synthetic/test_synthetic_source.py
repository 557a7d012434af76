"""The synthetic ground-truth generator: mixings, few-shot world, sparse tasks, Assumption 7."""
import numpy as np
import pytest
import torch

from episodes.sources.base import FewShotSource
from episodes.sources.synthetic import (make_mixing, make_synthetic_source, make_synthetic_world,
                                        sample_sparse_tasks, sample_supports, satisfies_assumption7)


@pytest.mark.parametrize("kind", ["identity", "rotation", "linear", "mlp"])
def test_mixing_is_invertible_numpy_and_torch(kind):
    g = make_mixing(kind, 7, seed=3)
    z = np.random.default_rng(0).standard_normal((4, 5, 7)) * 3
    np.testing.assert_allclose(g.g_inverse(g.g(z)), z, atol=1e-10)
    np.testing.assert_allclose(g.g(g.g_inverse(z)), z, atol=1e-10)
    zt = torch.as_tensor(z, dtype=torch.float64)
    xt = g.g(zt)
    assert isinstance(xt, torch.Tensor) and xt.dtype == torch.float64 and xt.shape == zt.shape
    torch.testing.assert_close(g.g_inverse(xt), zt)


def test_mixing_kinds_have_their_structure():
    z = np.random.default_rng(1).standard_normal((100, 6))
    np.testing.assert_array_equal(make_mixing("identity", 6).g(z), z)
    rot = make_mixing("rotation", 6, seed=0).matrix
    np.testing.assert_allclose(rot @ rot.T, np.eye(6), atol=1e-12)
    lin = make_mixing("linear", 6, seed=0, condition=4.0).matrix
    assert np.linalg.cond(lin) <= 4.0 + 1e-9
    mlp = make_mixing("mlp", 6, seed=0)
    x = mlp.g(z)
    # a nonlinear map: not explained exactly by an affine fit
    coef, res, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], x, rcond=None)
    assert res.sum() > 1e-3
    assert not np.allclose(make_mixing("mlp", 6, seed=1).g(z), x)


def test_mixing_rejects_bad_input():
    with pytest.raises(ValueError, match="mixing must be one of"):
        make_mixing("tanh", 4)
    with pytest.raises(ValueError, match="size 4"):
        make_mixing("rotation", 4).g(np.zeros((2, 3)))


def test_supports_have_the_right_size():
    s = sample_supports(200, 12, support_size=3, rng=0)
    assert s.shape == (200, 12) and s.dtype == bool and (s.sum(1) == 3).all()
    b = sample_supports(200, 12, support_size=4, block_size=2, rng=0)
    assert (b.sum(1) == 4).all()
    assert (b[:, 0::2] == b[:, 1::2]).all()          # features of a block co-occur
    p = sample_supports(500, 12, support_prob=0.3, rng=0)
    assert p.any(1).all()                             # empty supports were redrawn
    assert abs(p.mean() - 0.3) < 0.03
    with pytest.raises(ValueError, match="exactly one"):
        sample_supports(3, 4)
    with pytest.raises(ValueError, match="multiple of block_size"):
        sample_supports(3, 4, support_size=3, block_size=2)


def test_assumption7_hand_cases():
    # m = 3: for each j the supports without j must cover the other two factors
    assert satisfies_assumption7([{0, 1}, {1, 2}, {0, 2}], 3)
    assert satisfies_assumption7([{0}, {1}, {2}], 3)
    # factors 0 and 1 always co-occur -> supports without 0 never contain 1
    assert not satisfies_assumption7([{0, 1}, {0, 1, 2}, {2}], 3)
    # a single task using everything: nothing excludes j
    assert not satisfies_assumption7([{0, 1, 2}], 3)
    mat = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=bool)
    assert satisfies_assumption7(mat, 3)
    assert satisfies_assumption7(sample_supports(300, 10, support_size=4, rng=0), 10)
    assert not satisfies_assumption7(sample_supports(300, 10, support_size=4, block_size=2, rng=0), 10)
    with pytest.raises(ValueError, match="outside"):
        satisfies_assumption7([{0, 5}], 3)


def test_sparse_regression_tasks_follow_the_model():
    t = sample_sparse_tasks(5, 40, n_factors=8, support_size=3, n_outputs=2, mixing="mlp", noise_std=0.0,
                            seed=0, dtype=torch.float64)
    assert t.x.shape == (5, 40, 8) and t.y.shape == (5, 40, 2) and t.weights.shape == (5, 2, 8)
    assert (t.supports.sum(1) == 3).all()
    assert (t.weights[~t.supports[:, None, :].expand_as(t.weights)] == 0).all()
    torch.testing.assert_close(t.y, t.z @ t.weights.transpose(1, 2))
    torch.testing.assert_close(t.mixing.g_inverse(t.x), t.z)
    a, b = t.split(30)
    assert a.x.shape[1] == 30 and b.x.shape[1] == 10
    again = sample_sparse_tasks(5, 40, n_factors=8, support_size=3, n_outputs=2, mixing="mlp", noise_std=0.0,
                                seed=0, dtype=torch.float64)
    torch.testing.assert_close(again.x, t.x)


def test_sparse_classification_tasks_are_argmax_of_sparse_logits():
    t = sample_sparse_tasks(3, 50, n_factors=6, support_size=2, n_outputs=4, task="classification", seed=1)
    assert t.y.dtype == torch.int64 and t.y.shape == (3, 50)
    torch.testing.assert_close(t.y, (t.z @ t.weights.transpose(1, 2)).argmax(-1))
    with pytest.raises(ValueError, match="classes"):
        sample_sparse_tasks(3, 5, n_factors=6, support_size=2, n_outputs=1, task="classification")


def test_few_shot_source_splits_share_one_world():
    kw = dict(seed=4, n_factors=8, factors_per_class=2, n_classes=(6, 3, 4), examples_per_class=10)
    tr, va, te = (make_synthetic_source(s, **kw) for s in ("train", "val", "test"))
    assert isinstance(tr, FewShotSource) and tr.name == "synthetic"
    assert tr.world is va.world is te.world and tr.mixing is te.mixing
    assert tr.world is make_synthetic_world(4, 8, 2, (6, 3, 4), "mlp", 1.0, 2.0, 1.0, 1)
    ids = [set(s.classes.tolist()) for s in (tr, va, te)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert tr.data.dtype == torch.float32 and tr.data.shape == (60, 8) and tr.latents.shape == (60, 8)
    torch.testing.assert_close(tr.mixing.g_inverse(tr.data.double()), tr.latents.double(), atol=1e-4, rtol=1e-4)
    for c, sup in tr.class_supports.items():
        assert len(sup) == 2
        mean = tr.world.class_means[c]
        assert (mean[sup.numpy()] != 0).all() and np.count_nonzero(mean) == 2
    # same seed -> same data; another seed -> another world
    torch.testing.assert_close(make_synthetic_source("train", **kw).data, tr.data)
    assert make_synthetic_source("train", **{**kw, "seed": 5}).world is not tr.world
    with pytest.raises(ValueError, match="split"):
        make_synthetic_source("validation")


def test_default_source_is_learnable_but_not_trivial():
    """5-way 5-shot nearest class mean on the true latents: well above chance (20%)."""
    src = make_synthetic_source("test")
    rng = np.random.default_rng(0)
    accs = []
    for _ in range(100):
        classes = rng.choice(src.classes.numpy(), 5, replace=False)
        sup, qry = [], []
        for c in classes:
            idx = rng.permutation(src.indices_by_class[int(c)].numpy())
            sup.append(src.latents[idx[:5]].numpy())
            qry.append(src.latents[idx[5:20]].numpy())
        means = np.stack([s.mean(0) for s in sup])
        q = np.concatenate(qry)
        labels = np.repeat(np.arange(5), 15)
        accs.append((((q[:, None] - means[None]) ** 2).sum(-1).argmin(1) == labels).mean())
    assert 0.5 < np.mean(accs) < 0.99
