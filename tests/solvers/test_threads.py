"""The solvers' CPU loops run with ``cpu_threads`` intra-op threads (metasparse.solvers.threads)."""
import pytest
import torch

import metasparse.solvers.linalg as linalg
from metasparse.heads import GroupSparseSVMHead
from metasparse.solvers import GroupSparseSVMDual
from metasparse.solvers.threads import solver_threads

from solver_problems import make_problem


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_solver_threads_sets_and_restores(two_threads):
    with solver_threads(torch.device("cpu"), 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with solver_threads(torch.device("cpu"), None):
        assert torch.get_num_threads() == 2
    with solver_threads(torch.device("meta"), 1):   # not the CPU: unchanged
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        with solver_threads(torch.device("cpu"), 1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_cpu_threads_validated():
    with pytest.raises(ValueError, match="cpu_threads"):
        GroupSparseSVMDual(cpu_threads=0)


@pytest.mark.parametrize("lambda1", [0.0, 0.5])
def test_solve_and_implicit_backward_use_cpu_threads(two_threads, monkeypatch, lambda1):
    # lambda1 = 0: Gram FISTA's Newton tries and its implicit backward; lambda1 > 0: the
    # Newton solver and its backward: all face systems go through linalg.spd_solve
    seen = []
    module, name = linalg, "spd_solve"
    real = getattr(module, name)

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(module, name, spy)
    X, labels, Y = make_problem()
    X = X.clone().requires_grad_(True)
    solver = GroupSparseSVMDual(tol=1e-8)
    sol = solver.run(X, Y, lambda1, 1.0, 1.0)
    assert torch.get_num_threads() == 2
    n_forward = len(seen)
    sol.weights.sum().backward()               # implicit backward
    assert len(seen) > n_forward
    assert seen and all(s == 1 for s in seen)
    assert torch.get_num_threads() == 2
    # same solution with torch's thread setting (only the thread count differs)
    ref = GroupSparseSVMDual(tol=1e-8, cpu_threads=None).run(X.detach(), Y, lambda1, 1.0, 1.0)
    assert torch.allclose(sol.weights.detach(), ref.weights, atol=1e-6)


def test_head_restores_threads(two_threads):
    X, labels, _ = make_problem(balanced=True)
    head = GroupSparseSVMHead(lambda_ratio=0.1)
    head.fit(X.float(), labels, 3)
    assert torch.get_num_threads() == 2
