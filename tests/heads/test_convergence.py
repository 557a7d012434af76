"""HeadFit.converged: the SVM heads say per episode whether the solve reached its tolerance."""
import pytest
import torch

from metasparse.heads import GroupSparseSVMHead, ProtoNetHead, RidgeHead, SVMHead

from test_heads import episode, needs_qpth  # tests/heads is on sys.path (rootdir-relative imports)


def _check_flag(fit, tol):
    assert fit.converged.dtype == torch.bool and fit.converged.shape == fit.rel_gap.shape
    assert fit.tol == tol
    assert torch.equal(fit.converged, fit.rel_gap <= tol)


@pytest.mark.parametrize("head", [GroupSparseSVMHead(lambda_ratio=0.01, max_iter=1),
                                  GroupSparseSVMHead(lambda1=0.1, max_iter=1), SVMHead(max_iter=1)])
def test_solver_stopped_short_is_reported(head):
    _, S, labels, k = episode(B=4, d=20, seed=3)
    fit = head.double().fit(S, labels, k)
    _check_flag(fit, 1e-5)
    assert not bool(fit.converged.all())
    assert float(fit.rel_gap.max()) > 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("head", [GroupSparseSVMHead(), GroupSparseSVMHead(lambda_ratio=0.3, dual_reg=0.0),
                                  SVMHead()])
def test_converged_solve_is_reported(head, dtype):
    _, S, labels, k = episode(B=3, dtype=dtype)
    fit = head.to(dtype).fit(S, labels, k)
    _check_flag(fit, 1e-5)
    assert bool(fit.converged.all())


def test_exact_zero_episodes_count_as_converged():
    """lambda1 >= lambda_max: W* = 0 is set exactly, whatever the solver's iterations did."""
    _, S, labels, k = episode(B=3)
    fit = GroupSparseSVMHead(lambda_ratio=1.0, max_iter=0).double().fit(S, labels, k)
    assert torch.all(fit.weights == 0)
    assert bool(fit.converged.all()) and torch.all(fit.rel_gap == 0)


def test_cvxpylayers_reports_its_gap_against_tol():
    _, S, labels, k = episode(B=1, shot=2, d=6, seed=2)
    fit = GroupSparseSVMHead(lambda1=0.8, solver="cvxpylayers", tol=1e-4).double().fit(S, labels, k)
    _check_flag(fit, 1e-4)
    assert bool(fit.converged.all())


@pytest.mark.parametrize("head", [RidgeHead(), ProtoNetHead()])
def test_closed_form_heads_report_nothing(head):
    _, S, labels, k = episode()
    fit = head.double().fit(S, labels, k)
    assert fit.converged is None and fit.tol is None


@needs_qpth
def test_qpth_reports_a_certified_gap():
    """An interior-point iterate stopped early is not yet dual-feasible: the gap must still flag it."""
    _, S, labels, k = episode(B=4, d=20, seed=3, dtype=torch.float32)
    early = SVMHead(solver="qpth", max_iters=1).fit(S, labels, k)
    _check_flag(early, 1e-5)
    assert not bool(early.converged.any())
    done = SVMHead(solver="qpth", max_iters=15).fit(S, labels, k)
    _check_flag(done, 1e-5)
    assert bool(done.converged.all())
