import pytest
import torch

from metasparse.solvers import GroupSparseSVMDual, implicit_dual_vjp
from metasparse.solvers.cvxpy_reference import CvxpyLayerDual

from solver_problems import make_problem

SOLVER = GroupSparseSVMDual(tol=1e-300, max_iter=1000)  # run to machine precision: smooth FD


def _loss(X, Y, Q, l1, l2, rho, solver=SOLVER):
    W = solver.run(X, Y, l1, l2, rho).weights
    S = Q @ W
    return (S ** 2).sum() + S.sum()


@pytest.mark.parametrize("lambda1,rho", [(0.0, 1.0), (0.7, 1.0), (0.7, 0.0), (0.3, 0.0)])
def test_implicit_gradients_match_central_differences(lambda1, rho):
    X, labels, Y = make_problem(B=2, n=9, d=6, seed=10)
    Q = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    l1 = torch.full((2,), lambda1, dtype=torch.float64, requires_grad=lambda1 > 0)
    l2 = torch.full((2,), 1.3, dtype=torch.float64, requires_grad=True)
    Xv = X.clone().requires_grad_()
    Qv = Q.clone().requires_grad_()
    inputs = [Xv, Qv, l2] + ([l1] if lambda1 > 0 else [])
    grads = torch.autograd.grad(_loss(Xv, Y, Qv, l1, l2, rho), inputs)
    eps = 1e-5
    D = torch.randn(X.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fd = (_loss(X + eps * D, Y, Q, l1.detach(), l2.detach(), rho)
          - _loss(X - eps * D, Y, Q, l1.detach(), l2.detach(), rho)) / (2 * eps)
    assert abs(float((grads[0] * D).sum()) - float(fd)) <= 2e-5 * max(1.0, abs(float(fd)))
    DQ = torch.randn(Q.shape, dtype=torch.float64)
    fdq = (_loss(X, Y, Q + eps * DQ, l1.detach(), l2.detach(), rho)
           - _loss(X, Y, Q - eps * DQ, l1.detach(), l2.detach(), rho)) / (2 * eps)
    assert abs(float((grads[1] * DQ).sum()) - float(fdq)) <= 1e-6 * max(1.0, abs(float(fdq)))
    e = torch.tensor([1.0, 0.0], dtype=torch.float64)
    fd2 = (_loss(X, Y, Q, l1.detach(), l2.detach() + eps * e, rho)
           - _loss(X, Y, Q, l1.detach(), l2.detach() - eps * e, rho)) / (2 * eps)
    assert abs(float(grads[2][0]) - float(fd2)) <= 2e-5 * max(1.0, abs(float(fd2)))
    if lambda1 > 0:
        fd1 = (_loss(X, Y, Q, l1.detach() + eps * e, l2.detach(), rho)
               - _loss(X, Y, Q, l1.detach() - eps * e, l2.detach(), rho)) / (2 * eps)
        assert abs(float(grads[3][0]) - float(fd1)) <= 2e-5 * max(1.0, abs(float(fd1)))


@pytest.mark.parametrize("lambda1", [0.3, 0.9])
def test_implicit_gradients_match_cvxpylayers(lambda1):
    X, labels, Y = make_problem(B=2, n=9, d=6, seed=11)
    Q = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    outs = []
    for layer in (None, CvxpyLayerDual(dual_reg=1.0)):
        Xv = X.clone().requires_grad_()
        l1 = torch.full((2,), lambda1, dtype=torch.float64, requires_grad=True)
        l2 = torch.full((2,), 0.8, dtype=torch.float64, requires_grad=True)
        W = SOLVER.run(Xv, Y, l1, l2, 1.0).weights if layer is None else layer(Xv, Y, l1, l2)[1]
        outs.append(torch.autograd.grad(((Q @ W) ** 2).sum(), [Xv, l1, l2]))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=2e-4 * max(1.0, float(b.abs().max())))


def test_unrolled_converges_to_implicit():
    X, labels, Y = make_problem(B=2, n=9, d=6, seed=12)
    Q = torch.randn(2, 4, 6, dtype=torch.float64)

    def grad(solver):
        Xv = X.clone().requires_grad_()
        return torch.autograd.grad(_loss(Xv, Y, Q, 0.5, 1.0, 1.0, solver), Xv)[0]

    g_imp = grad(SOLVER)
    errs = [float((grad(GroupSparseSVMDual(tol=1e-30, max_iter=it, backward="unrolled")) - g_imp).norm())
            for it in (20, 100, 400)]
    assert errs[2] < errs[0] and errs[2] < 1e-3 * float(g_imp.norm())


def test_vjp_function_alone_shapes_and_linearity():
    X, labels, Y = make_problem(B=2, n=9, d=6, seed=13)
    sol = SOLVER.run(X, Y, 0.4, 1.0, 1.0)
    v = lambda t: torch.full((2,), t, dtype=torch.float64)
    G = torch.randn_like(sol.dual)
    a = implicit_dual_vjp(sol.dual, X, Y, v(0.4), v(1.0), v(1.0), G)
    b = implicit_dual_vjp(sol.dual, X, Y, v(0.4), v(1.0), v(1.0), 2 * G)
    assert a[0].shape == X.shape and a[1].shape == (2,) and a[2].shape == (2,)
    for x, y in zip(a, b):
        assert torch.allclose(2 * x, y)
