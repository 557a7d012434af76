"""The working-set semismooth Newton solver on the inputs users have: ResNet-like features
(non-negative, a dominant shared direction, norms in the hundreds, d in the thousands)."""
import torch

from metasparse.solvers import GroupSparseSVMDual, lambda_max
from metasparse.solvers.objectives import dual_objective, one_hot, primal_objective


def resnet_like(B=4, n=25, d=3000, k=5, seed=0, dtype=torch.float32):
    """Backbone-like support features: ReLU noise + a shared non-negative mean direction +
    a non-negative class component; row norms ~200, top eigenvalue of X X^T ~150x the next."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(1, 1, d, generator=g) ** 3 * 8.0
    labels = torch.arange(k).repeat(n // k)[None].expand(B, -1).contiguous()
    cls = torch.relu(torch.randn(B, k, d, generator=g))
    X = torch.relu(torch.randn(B, n, d, generator=g)) * 1.2 + mean + cls.gather(1, labels[..., None].expand(B, n, d))
    return X.to(dtype), labels, one_hot(labels, k, dtype)


def test_features_are_the_hard_kind():
    X, _, _ = resnet_like()
    assert 150 < float(X.norm(dim=-1).mean()) < 400
    ev = torch.linalg.eigvalsh(X.double() @ X.double().transpose(1, 2))
    assert bool((ev[:, -1] > 50 * ev[:, -2]).all())


def test_newton_converges_where_fista_stops_short():
    X, labels, Y = resnet_like()
    lmax, Lam0 = lambda_max(X, Y, 1.0, 1.0)
    l1 = 0.01 * lmax
    # the first-order solver at its default budget misses the tolerance on some
    # episode, and says so
    fista = GroupSparseSVMDual(tol=1e-5, method="fista").run(X, Y, l1, 1.0, 1.0, init=Lam0)
    assert not bool(fista.converged.all())
    assert bool((fista.converged == (fista.rel_gap <= 1e-5)).all())
    sol = GroupSparseSVMDual(tol=1e-5).run(X, Y, l1, 1.0, 1.0, init=Lam0)
    assert bool(sol.converged.all()) and int(sol.n_iter.max()) <= 20
    # independent certificate on all d features, float64: P(W) - D(Lam)
    X64, Y64, l1d = X.double(), Y.double(), l1.double()
    one = torch.ones_like(l1d)
    P = primal_objective(sol.weights.double(), X64, Y64, l1d, one, one)
    D = dual_objective(sol.dual.double(), X64, Y64, l1d, one, one)
    # (float32 W and Lam: weak duality P >= D holds up to their rounding)
    assert bool(((P - D) <= 1e-5 * P).all()) and bool(((P - D) >= -1e-6 * P).all())
    # sparse, as the paper's head should be at lambda_ratio = 0.01
    used = (sol.weights.abs().sum(-1) > 0).double().mean(-1)
    assert bool((used < 0.5).all()) and bool((used > 0).all())


def test_working_set_gradient_matches_finite_differences():
    """Gradients through the fused backward when the working set is a strict subset."""
    X, labels, Y = resnet_like(B=2, n=10, d=600, seed=3, dtype=torch.float64)
    X = X / 20.0
    Q = torch.randn(2, 6, 600, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    solver = GroupSparseSVMDual(tol=1e-13)
    lmax, _ = lambda_max(X, Y, 1.0, 1.0)
    l1 = 0.05 * lmax

    def loss(Xx):
        S = Q @ solver.run(Xx, Y, l1, 1.0, 1.0).weights
        return (S ** 2).sum() + S.sum()

    Xv = X.clone().requires_grad_()
    sol = solver.run(Xv, Y, l1, 1.0, 1.0)
    assert bool(sol.converged.all())
    g, = torch.autograd.grad(loss(Xv), Xv)
    D = torch.randn(X.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    eps = 1e-6
    fd = (loss(X + eps * D) - loss(X - eps * D)) / (2 * eps)
    assert abs(float((g * D).sum()) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd)))
    # only active features (non-zero rows of W*) receive a gradient
    active = sol.weights.detach().abs().sum(-1) > 0
    assert bool((g.abs().sum(1)[~active] == 0).all()) and bool((g.abs().sum(1)[active] > 0).any())


def test_svm_gradient_exact_after_newton_at_tight_tolerance():
    """lambda1 = 0 (Gram FISTA + Newton): the Newton step can leave ~1e-17 where the dual
    is exactly 0; the returned point must have exact zeros, or the implicit backward
    reads a wrong face (regression: gradients were 10-100% off at tol 1e-8)."""
    from metasparse.heads import SVMHead
    g = torch.Generator().manual_seed(1)
    S = torch.randn(3, 10, 16, generator=g, dtype=torch.float64)
    Q = torch.randn(3, 15, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat(2)[None].expand(3, -1).contiguous()
    head = SVMHead(C_reg=0.1, tol=1e-8)

    def loss(Sx):
        return head(Q, Sx, labels, 5).square().sum()

    Sv = S.clone().requires_grad_()
    grad, = torch.autograd.grad(loss(Sv), Sv)
    eps = 1e-6
    for seed in range(3):
        D = torch.randn(S.shape, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
        fd = (loss(S + eps * D) - loss(S - eps * D)) / (2 * eps)
        assert abs(float((grad * D).sum()) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd)))
