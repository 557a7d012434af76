"""Host syncs and device operations of the SVM heads, counted on the CPU
(metasparse.profiling): on a GPU every sync stalls the pipeline and every operation is a
kernel launch, so a regression here is a regression of the training step's speed."""
import torch

from metasparse.heads import GroupSparseSVMHead, SVMHead
from metasparse.profiling import count_ops
from metasparse.solvers import newton


def _features(B=8, n=25, d=3000, seed=0):
    """Non-negative features with a shared mean direction and norms in the hundreds, as
    ResNet-12 features are (the hard case for first-order methods)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(B, n, d, generator=g)) * 0.8
    return x + torch.relu(torch.randn(B, 1, d, generator=g)) * 1.2


def _labels(B, way, shot):
    return torch.arange(way).repeat_interleave(shot).expand(B, -1).contiguous()


def _fwd_bwd(head, way=5, shot=5, query=6, d=3000):
    B = 8
    s = _features(B, way * shot, d, 0).requires_grad_(True)
    q = _features(B, way * query, d, 1).requires_grad_(True)
    ys, yq = _labels(B, way, shot), _labels(B, way, query)
    head(q, s, ys, way)                                  # warm-up
    with count_ops() as c:
        out = head.predict(q, s, ys, way)
        torch.nn.functional.cross_entropy(out.logits.reshape(-1, way), yq.reshape(-1)).backward()
    assert bool(out.fit.converged.all())
    return c, out.fit


def test_group_sparse_head_syncs_and_operations_are_bounded():
    c, fit = _fwd_bwd(GroupSparseSVMHead(lambda_ratio=0.05))
    # a handful per call (input checks, one transfer per Newton check, working-set growth,
    # the backward's face solve), not a few per iteration
    assert c.host_syncs <= 20, c.sync_sites.most_common(8)
    # ~600 device operations per Newton iteration, ~1000 for the rest (measured 2432 for 3)
    assert c.aten_calls <= 1000 + 600 * int(fit.n_iter.max()), c.aten_calls


def test_svm_head_is_solved_by_newton_in_gram_space():
    c, fit = _fwd_bwd(SVMHead())
    assert int(fit.n_iter.max()) <= 6          # an active-set method, whatever the conditioning
    assert c.host_syncs <= 12, c.sync_sites.most_common(8)
    assert c.aten_calls <= 1000, c.aten_calls        # measured 771


def test_newton_iterations_make_no_host_sync(monkeypatch):
    """The update step of both Newton solvers runs without reading the device."""
    counts = []
    for cls in (newton.WorkingSetNewton, newton.GramNewton):
        real = cls.update

        def update(self, state, real=real):
            with count_ops() as c:
                out = real(self, state)
            counts.append(c.host_syncs)
            return out

        monkeypatch.setattr(cls, "update", update)
    _fwd_bwd(GroupSparseSVMHead(lambda_ratio=0.05))
    _fwd_bwd(SVMHead())
    assert counts and all(n == 0 for n in counts), counts
