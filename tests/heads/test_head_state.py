"""The SVM heads' state dict names what it holds (``lambda_ratio_value`` / ``log_lambda_ratio``
for a ratio, ``lambda1_value`` / ``log_lambda1`` for an absolute lambda1), checkpoints written
with the old names (a ratio stored as ``lambda1_value`` / ``log_lambda1``) load as before, and
``solver="qpth"`` without learn2learn / qpth is a one-line error naming the extra."""
import importlib.machinery
import math
import sys
import types

import pytest
import torch

from metasparse.api.model import ModelSpec, build_model, load_model
from metasparse.engine.checkpoint import save_checkpoint
from metasparse.errors import ConfigError
from metasparse.heads import GroupSparseSVMHead, SVMHead
from metasparse.heads.group_sparse_svm import MissingExtraError
from metasparse.registry import build_head

from test_heads import episode  # tests/heads is on sys.path (rootdir-relative imports)


def _old_keys(state, prefix=""):
    """``state`` as the head wrote it before the rename: the ratio under lambda1's names."""
    ren = {f"{prefix}lambda_ratio_value": f"{prefix}lambda1_value", f"{prefix}log_lambda_ratio": f"{prefix}log_lambda1"}
    return {ren.get(k, k): v for k, v in state.items()}


@pytest.mark.parametrize("head, keys, value", [
    (GroupSparseSVMHead(lambda_ratio=0.1), ["scale", "lambda_ratio_value", "lambda2_value"], 0.1),
    (GroupSparseSVMHead(lambda_ratio=0.1, learn_lambda1=True, learn_lambda2=True),
     ["scale", "log_lambda_ratio", "log_lambda2"], 0.1),
    (GroupSparseSVMHead(lambda1=0.3), ["scale", "lambda1_value", "lambda2_value"], 0.3),
    (GroupSparseSVMHead(lambda1=0.3, learn_lambda1=True), ["scale", "log_lambda1", "lambda2_value"], 0.3),
    (SVMHead(), ["scale", "lambda_ratio_value", "lambda2_value"], 0.0),
])
def test_state_dict_names_what_it_holds(head, keys, value):
    state = head.state_dict()
    assert sorted(state) == sorted(keys)
    stored = state[keys[1]]
    assert (float(stored.exp()) if keys[1].startswith("log_") else float(stored)) == pytest.approx(value)


def test_old_ratio_buffer_loads_and_is_used():
    Q, S, labels, k = episode(seed=4)
    ref = GroupSparseSVMHead(lambda_ratio=0.4).double()          # what the old checkpoint held
    old = _old_keys(ref.state_dict())
    assert "lambda1_value" in old and "lambda_ratio_value" not in old
    head = GroupSparseSVMHead(lambda_ratio=0.01).double()
    head.load_state_dict(old)                                     # strict: no missing / unexpected key
    assert "lambda1_value" in old                                 # the caller's dict is left alone
    assert float(head.lambda_ratio_value) == 0.4
    fit = head.fit(S, labels, k)
    torch.testing.assert_close(fit.lambda1, 0.4 * fit.lambda_max)  # the loaded ratio is the one used
    torch.testing.assert_close(head(Q, S, labels, k), ref(Q, S, labels, k))


def test_old_ratio_zero_makes_the_head_vanilla():
    head = GroupSparseSVMHead(lambda_ratio=0.2)
    head.load_state_dict(_old_keys(GroupSparseSVMHead(lambda_ratio=0.0).state_dict()))
    assert head.vanilla                                            # the host copy follows the loaded value
    _, S, labels, k = episode(seed=5, dtype=torch.float32)
    assert torch.all(head.fit(S, labels, k).lambda1 == 0)


def test_old_learnable_ratio_loads():
    ref = GroupSparseSVMHead(lambda_ratio=0.25, learn_lambda1=True)
    old = _old_keys(ref.state_dict())
    assert "log_lambda1" in old
    head = GroupSparseSVMHead(lambda_ratio=0.01, learn_lambda1=True)
    head.load_state_dict(old)
    assert float(head.log_lambda_ratio.detach()) == pytest.approx(math.log(0.25))
    assert isinstance(head.log_lambda_ratio, torch.nn.Parameter)


def test_absolute_lambda1_keeps_its_key():
    ref = GroupSparseSVMHead(lambda1=0.7)
    head = GroupSparseSVMHead(lambda1=0.1)
    head.load_state_dict(ref.state_dict())
    assert float(head.lambda1_value) == 0.7 and head._lambda1_host == 0.7
    # a ratio head given both names keeps the new one and reports the old as unexpected (nothing dropped silently)
    both = {"scale": torch.ones(1), "lambda2_value": ref.lambda2_value,
            "lambda1_value": torch.tensor(0.7, dtype=torch.float64),
            "lambda_ratio_value": torch.tensor(0.1, dtype=torch.float64)}
    with pytest.raises(RuntimeError, match='Unexpected key.*"lambda1_value"'):
        GroupSparseSVMHead(lambda_ratio=0.5).load_state_dict(both)


def test_checkpoint_with_old_keys_loads(tmp_path):
    """A checkpoint file as the old code wrote it (keys under ``head.``) loads through load_model."""
    spec = ModelSpec("mlp", {"in_dim": 6, "out_dim": 4, "hidden": [8]}, "group-sparse-svm", {"lambda_ratio": 0.05})
    torch.manual_seed(0)
    model = build_model(spec)
    state = _old_keys(model.state_dict(), prefix="head.")
    state["head.lambda1_value"] = torch.tensor(0.3, dtype=torch.float64)
    assert "head.lambda1_value" in state and "head.lambda_ratio_value" not in state
    config = {"backbone": spec.backbone, "backbone_options": spec.backbone_options, "head": spec.head,
              "head_options": spec.head_options}
    save_checkpoint(tmp_path / "old.pt", {"config": config, "model": state})
    loaded, _ = load_model(tmp_path / "old.pt")
    assert float(loaded.head.lambda_ratio_value) == pytest.approx(0.3)
    for name, p in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], p)


def test_qpth_without_the_extra_names_it(monkeypatch):
    # qpth present (a stand-in module, whether or not the extra is installed), learn2learn not
    qpth = types.ModuleType("qpth")
    qpth.__spec__ = importlib.machinery.ModuleSpec("qpth", None)
    monkeypatch.setitem(sys.modules, "qpth", qpth)
    monkeypatch.setitem(sys.modules, "learn2learn", None)       # as if not installed: find_spec -> None
    with pytest.raises(MissingExtraError, match=r"needs learn2learn, not installed: pip install 'metasparse\[l2l\]'"):
        SVMHead(solver="qpth")
    with pytest.raises(ImportError):                              # it is an ImportError too
        SVMHead(solver="qpth")
    with pytest.raises(ConfigError) as err:                       # what the command line prints
        build_head("svm", {"solver": "qpth"})
    assert len(str(err.value).splitlines()) == 1 and "metasparse[l2l]" in str(err.value)
    monkeypatch.setitem(sys.modules, "qpth", None)
    with pytest.raises(MissingExtraError, match="needs learn2learn and qpth"):
        SVMHead(solver="qpth")
