import importlib.util

import pytest
import torch

from metasparse.registry import build_head
from metasparse.heads import (
    GroupSparseSVMHead, HeadOutput, ProtoNetHead, RidgeHead, SVMHead,
)


#: MetaOptNet's QP baseline (solver="qpth") runs learn2learn's SVClassifier on qpth: the [l2l] extra
needs_qpth = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("learn2learn", "qpth")),
                                reason="needs learn2learn and qpth (pip install 'metasparse[l2l]')")


def episode(B=2, k=5, shot=3, nq=4, d=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(B, k * shot, d, generator=g, dtype=dtype)
    labels = torch.arange(k).repeat(shot)[None].expand(B, -1).contiguous()
    Q = torch.randn(B, k * nq, d, generator=g, dtype=dtype)
    return Q, S, labels, k


@pytest.mark.parametrize("head", [GroupSparseSVMHead(), GroupSparseSVMHead(lambda1=0.5, dual_reg=0.0),
                                  SVMHead(), RidgeHead(), ProtoNetHead()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_gradients(head, dtype):
    Q, S, labels, k = episode(dtype=dtype)
    S.requires_grad_()
    Q.requires_grad_()
    out = head.to(dtype).predict(Q, S, labels, k)
    assert isinstance(out, HeadOutput)
    assert out.logits.shape == (2, 20, 5) and out.logits.dtype == dtype
    assert out.fit.active.shape == (2, 12) and out.fit.unused_fraction.shape == (2,)
    out.logits.logsumexp(-1).sum().backward()
    assert torch.isfinite(S.grad).all() and S.grad.abs().sum() > 0
    assert torch.isfinite(Q.grad).all() and head.scale.grad is not None
    # the logits are the head's own classifier applied to the queries, computed
    # independently here: scale * query @ W (linear heads), scale * -||q - c||^2 / d (ProtoNet)
    with torch.no_grad():
        if not isinstance(head, ProtoNetHead):
            expected = head.scale * (Q @ out.fit.weights)
        else:
            centres = torch.stack([S[:, labels[0] == c].mean(1) for c in range(k)], 1)
            expected = head.scale * -((Q[:, :, None, :] - centres[:, None]) ** 2).sum(-1) / Q.shape[-1]
        assert torch.allclose(out.logits, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_group_sparse_fit_fields_and_sparsity():
    Q, S, labels, k = episode()
    fit = GroupSparseSVMHead(lambda_ratio=0.5, dual_reg=1.0).fit(S, labels, k)
    assert fit.weights.shape == (2, 12, 5) and fit.dual.shape == (2, 15, 5)
    assert fit.lambda1.shape == (2,) and fit.gap.shape == (2,)
    assert torch.allclose(fit.lambda1, 0.5 * fit.lambda_max)
    assert torch.all(fit.active == (fit.weights.abs().sum(-1) > 0))
    assert torch.all(fit.unused_fraction > 0)
    for dual_reg in (0.0, 1.0):
        zero = GroupSparseSVMHead(lambda_ratio=1.0, dual_reg=dual_reg).fit(S, labels, k)
        assert torch.all(zero.weights == 0) and torch.all(zero.unused_fraction == 1)


def test_learnable_lambdas_get_gradients():
    Q, S, labels, k = episode()
    head = GroupSparseSVMHead(lambda_ratio=0.2, learn_lambda1=True, learn_lambda2=True).double()
    head(Q, S, labels, k).logsumexp(-1).sum().backward()
    assert head.log_lambda_ratio.grad is not None and head.log_lambda_ratio.grad != 0
    assert head.log_lambda2.grad is not None and head.log_lambda2.grad != 0


@needs_qpth
def test_svm_head_agrees_with_learn2learn_qpth():
    Q, S, labels, k = episode(seed=1)
    ours = SVMHead(C_reg=0.1, tol=1e-12, max_iter=20000).double()(Q, S, labels, k)
    ref = SVMHead(C_reg=0.1, solver="qpth", max_iters=100).double()(Q, S, labels, k)
    assert torch.allclose(ours, ref, atol=1e-4 * float(ref.abs().max()))
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_cvxpylayers_solver_agrees_with_dual():
    Q, S, labels, k = episode(B=1, shot=2, d=6, seed=2)
    a = GroupSparseSVMHead(lambda1=0.8, solver="dual", tol=1e-12, max_iter=20000).double()(Q, S, labels, k)
    b = GroupSparseSVMHead(lambda1=0.8, solver="cvxpylayers").double()(Q, S, labels, k)
    assert torch.allclose(a, b, atol=1e-5)


def test_ridge_closed_form():
    Q, S, labels, k = episode()
    head = RidgeHead(lambda_reg=3.0).double()
    Y = torch.nn.functional.one_hot(labels, k).double()
    d = S.shape[-1]
    # primal normal equations (X^T X + lambda I) W = X^T Y, independent of the dual form
    W = torch.linalg.solve(S.transpose(1, 2) @ S + 3.0 * torch.eye(d, dtype=torch.float64), S.transpose(1, 2) @ Y)
    assert torch.allclose(head(Q, S, labels, k), Q @ W, atol=1e-10)


def test_protonet_direct():
    Q, S, labels, k = episode()
    logits = ProtoNetHead().double()(Q, S, labels, k)
    for b in range(2):
        for l in range(k):
            c = S[b][labels[b] == l].mean(0)
            assert torch.allclose(logits[b, :, l], -((Q[b] - c) ** 2).sum(-1) / S.shape[-1], atol=1e-10)


def test_bad_inputs():
    Q, S, labels, k = episode()
    with pytest.raises(ValueError, match="exactly one"):
        GroupSparseSVMHead(lambda_ratio=0.1, lambda1=0.2)
    with pytest.raises(ValueError, match="solver"):
        GroupSparseSVMHead(solver="nope")
    with pytest.raises(ValueError, match="nope"):
        build_head("nope")
    bad = S.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        GroupSparseSVMHead()(Q, bad, labels, k)
    with pytest.raises(ValueError, match="support_labels"):
        GroupSparseSVMHead()(Q, S, labels + 10, k)
    assert isinstance(build_head("svm-cs"), SVMHead) and isinstance(build_head("r2d2"), RidgeHead)


def test_non_finite_query_raises():
    Q, S, labels, k = episode()
    for bad in (float("nan"), float("inf")):
        Qb = Q.clone()
        Qb[1, 3, 2] = bad
        for head in (GroupSparseSVMHead(lambda_ratio=0.9), RidgeHead(), ProtoNetHead()):
            with pytest.raises(ValueError, match="query"):
                head.double()(Qb, S, labels, k)


def test_ridge_head_large_support_with_two_threads():
    """Batched LU in torch 2.14.1 returns corrupt pivots on CPU with several threads for
    n >~ 200; the ridge head solves its SPD system by Cholesky instead."""
    import numpy as np
    from metasparse.heads import RidgeHead
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        S = torch.randn(4, 250, 40, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 5, (4, 250), generator=g)
        W = RidgeHead(lambda_reg=50.0).fit(S, labels, 5).weights
    finally:
        torch.set_num_threads(old)
    for b in range(4):
        X, Y = S[b].numpy(), np.eye(5)[labels[b].numpy()]
        ref = X.T @ np.linalg.solve(X @ X.T + 50.0 * np.eye(250), Y)
        assert np.allclose(W[b].numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("name", ["group-sparse-svm", "svm", "ridge", "protonet"])
def test_an_episode_with_a_class_without_support_examples_is_refused(name):
    """Every head used to fit such an episode (the SVMs silently; ProtoNet refused)."""
    from metasparse.registry import build_head
    g = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 0]])     # episode 2 has no class 2
    with pytest.raises(ValueError, match="an episode has a class without one"):
        build_head(name, {}).fit(support, labels, 3)
    with pytest.raises(ValueError, match=r"expected values in 0..2, got range 0..3"):
        build_head(name, {}).fit(support, labels + (labels == 2).long(), 3)
