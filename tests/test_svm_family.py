"""One SVM family, one knob: ``svm`` is ``group-sparse-svm`` at ``lambda_ratio = 0`` with the
same lambda2 / dual_reg / solver defaults (MetaOptNet's C = 0.1), in Python and on the
command line, so the default comparison of the two heads changes lambda1 only."""
import json

import pytest
import torch

from metasparse.api import TrainConfig, train
from metasparse.cli import main
from metasparse.errors import ConfigError
from metasparse.heads import GroupSparseSVMHead, SVMHead
from metasparse.registry import build_head

SOURCE = {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}
EVAL = ["--shot", "2", "--episodes", "4", "--query", "2", "--no-progress", "--device", "cpu"]


def _episode(seed=0, B=3, k=4, shot=3, d=12, nq=5):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(B, k * shot, d, generator=g)
    Q = torch.randn(B, nq, d, generator=g)
    labels = torch.arange(k).repeat_interleave(shot).expand(B, -1).contiguous()
    return Q, S, labels, k


def test_shared_defaults_are_metaoptnet_svm_cs():
    gs, svm = GroupSparseSVMHead(), SVMHead()
    for h in (gs, svm):
        assert float(h.lambda2_value) == 10.0 and h.dual_reg == 1.0     # C = 0.1 -> lambda2 = 10
        assert (h.solver.tol, h.solver.max_iter, h.solver.backward) == (1e-5, 2000, "implicit")
    assert svm.C_reg == pytest.approx(0.1)
    assert float(SVMHead(C_reg=0.5).lambda2_value) == 2.0


@pytest.mark.parametrize("opts", [{}, {"lambda2": 1.0, "dual_reg": 1.0}, {"lambda2": 3.0, "dual_reg": 0.5}])
def test_svm_is_group_sparse_svm_at_ratio_zero(opts):
    Q, S, labels, k = _episode()
    a = build_head("svm", opts)(Q, S, labels, k)
    b = build_head("group-sparse-svm", {"lambda_ratio": 0.0, **opts})(Q, S, labels, k)
    assert torch.equal(a, b)
    # and the knob changes the classifier: lambda2 is not silently ignored
    if opts:
        assert not torch.equal(a, build_head("svm", {})(Q, S, labels, k))


def test_svm_options_are_checked():
    with pytest.raises(ConfigError, match="at most one of C_reg and lambda2"):
        build_head("svm", {"C_reg": 0.1, "lambda2": 10.0})
    with pytest.raises(ConfigError, match="dual_reg is 1"):
        build_head("svm", {"solver": "qpth", "dual_reg": 0.5})
    with pytest.raises(ConfigError, match="lambda2"):
        build_head("svm", {"lambda2": 0.0})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(TrainConfig(out=tmp_path_factory.mktemp("fam") / "run", dataset="synthetic", source_options=SOURCE,
                             head="group-sparse-svm", lambda_ratio=0.1, epochs=1, batches_per_epoch=2, val_episodes=0,
                             way=3, query=3, episodes_per_batch=2, device="cpu", progress=False))


def test_cli_default_flags_identical(run, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(run.run_dir), "--heads", "svm", "group-sparse-svm", "--lambda-ratios", "0",
                 "--out", str(out), *EVAL]) == 0
    rows = json.loads((out / "compare.json").read_text())["shots"]["2"]
    assert [r["name"] for r in rows] == ["svm", "group-sparse-svm(r=0)"]
    assert rows[0]["per_episode_accuracy"] == rows[1]["per_episode_accuracy"]
    assert rows[0]["loss"] == rows[1]["loss"]          # the same logits, to the last bit
    assert rows[1]["paired_vs_reference"]["mean_diff"] == 0.0


def test_cli_head_options_for_svm(run, tmp_path):
    a, b = tmp_path / "svm.json", tmp_path / "gs.json"
    assert main(["evaluate", "--checkpoint", str(run.run_dir), "--head", "svm", "--head-options",
                 '{"dual_reg":1.0,"lambda2":1.0}', "--out", str(a), *EVAL]) == 0
    assert main(["evaluate", "--checkpoint", str(run.run_dir), "--head", "group-sparse-svm", "--lambda-ratio", "0",
                 "--head-options", '{"dual_reg":1.0,"lambda2":1.0}', "--out", str(b), *EVAL]) == 0
    ra, rb = (json.loads(p.read_text()) for p in (a, b))
    assert ra["head_options"] == {"dual_reg": 1.0, "lambda2": 1.0}
    assert ra["results"]["2"]["accuracy"] == rb["results"]["2"]["accuracy"]
    assert ra["results"]["2"]["loss"] == rb["results"]["2"]["loss"]
