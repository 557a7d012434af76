"""``metasparse import``: MetaOptNet's .pth files and learn2learn's ResNet-12 state dicts become
metasparse checkpoints whose features equal the source network's, then evaluate / compare run
on them; every key / shape problem is a one-line error naming the key."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_formats import write_metaoptnet_cifar  # noqa: E402
from metasparse.api import load_model  # noqa: E402
from metasparse.cli import main  # noqa: E402

l2l_models = pytest.importorskip("learn2learn.vision.models")

# MetaOptNet's models/ResNet12_embedding.py: ResNet.layer{1..4} = Sequential(BasicBlock), a
# BasicBlock has conv1/bn1, conv2/bn2, conv3/bn3 and downsample = Sequential(Conv2d, BatchNorm2d)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
METAOPTNET_KEYS = [f"layer{n}.0.{k}" for n in range(1, 5) for k in (
    "conv1.weight", *(f"bn1.{b}" for b in _BN), "conv2.weight", *(f"bn2.{b}" for b in _BN),
    "conv3.weight", *(f"bn3.{b}" for b in _BN), "downsample.0.weight", *(f"downsample.1.{b}" for b in _BN))]


def _randomise_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def l2l_net():
    torch.manual_seed(0)
    return _randomise_bn(l2l_models.ResNet12(output_size=5, hidden_size=2560, avg_pool=False, dropblock_size=2))


def _err(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _same_features(dst, net, size):
    model, ck = load_model(dst)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval().backbone(x)
        ref = net(x)
    assert ours.shape == ref.shape == (3, ck["config"]["n_features"])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    return model, ck


def test_learn2learn_state_dict(l2l_net, tmp_path, capsys):
    src = tmp_path / "l2l.pt"
    torch.save(l2l_net.state_dict(), src)
    assert any(k.startswith("features.layer1.0.") for k in l2l_net.state_dict())
    dst = tmp_path / "l2l_ms.pt"
    assert main(["import", str(src), "--from", "learn2learn", "--dataset", "CIFAR_FS", "--out", str(dst)]) == 0
    assert "ignored 2 classifier keys" in capsys.readouterr().out
    model, ck = _same_features(dst, l2l_net.features, 32)
    assert ck["config"]["dataset"] == "cifar-fs" and ck["config"]["imported_from"]["format"] == "learn2learn"
    # the backbone alone (ResNet12Backbone: layer1..4 at the top) and a DataParallel prefix
    src2 = tmp_path / "backbone.pt"
    torch.save({f"module.{k}": v for k, v in l2l_net.features.state_dict().items()}, src2)
    dst2 = tmp_path / "bb_ms.pt"
    assert main(["import", str(src2), "--from", "learn2learn", "--dataset", "cifar-fs", "--out", str(dst2)]) == 0
    _same_features(dst2, l2l_net.features, 32)
    # older learn2learn ResNet12: layer1..4 at the top, repeated as features.{0..3} (a Sequential)
    bb = l2l_net.features.state_dict()
    old = {**bb, **{f"features.{int(k[5]) - 1}.0.{k.split('.', 2)[2]}": v for k, v in bb.items()}}
    old.update({k: v for k, v in l2l_net.state_dict().items() if k.startswith("classifier.")})
    assert "features.3.0.downsample.1.running_var" in old and "layer4.0.downsample.1.running_var" in old
    src3 = tmp_path / "old_l2l.pt"
    torch.save(old, src3)
    dst3 = tmp_path / "old_ms.pt"
    assert main(["import", str(src3), "--from", "learn2learn", "--dataset", "cifar-fs", "--out", str(dst3)]) == 0
    _same_features(dst3, l2l_net.features, 32)


def test_metaoptnet_pth_with_dataparallel_prefix(l2l_net, tmp_path, capsys):
    backbone = l2l_net.features.state_dict()
    assert sorted(backbone) == sorted(METAOPTNET_KEYS)       # learn2learn's ResNet-12 is MetaOptNet's
    src = tmp_path / "best_model.pth"
    torch.save({"embedding": {f"module.{k}": backbone[k] for k in METAOPTNET_KEYS},
                "head": {"scale": torch.tensor([7.5])}}, src)
    dst = tmp_path / "mon.pt"
    assert main(["import", str(src), "--from", "metaoptnet", "--dataset", "FC100", "--out", str(dst)]) == 0
    assert "logit scale 7.5" in capsys.readouterr().out
    model, ck = _same_features(dst, l2l_net.features, 32)
    assert ck["config"]["n_features"] == 2560 and ck["config"]["head"] == "svm"
    assert ck["config"]["dataset"] == "fc100" and ck["config"]["example_shape"] == [3, 32, 32]
    assert float(model.head.scale.detach()) == 7.5
    assert "already holds a result; pass --force" in _err(
        capsys, ["import", str(src), "--from", "metaoptnet", "--dataset", "fc100", "--out", str(dst)])


@pytest.mark.parametrize("case,expected", [
    ("missing", "missing key 'layer3.0.bn2.running_var'"),
    ("shape", "key 'layer2.0.conv2.weight' has shape (160, 160, 3, 1)"),
    ("unexpected", "unexpected key 'layer2.0.fc.weight'"),
    ("head", "unexpected key 'head.temperature'"),
    ("not_a_dict", "expected MetaOptNet's {'embedding': ..., 'head': ...} dict"),
    ("nan", "key 'layer2.0.conv2.weight' holds NaN or Inf"),
    ("head_nan", "key 'head.scale' holds inf"),
    ("head_tensor", "'head' holds a Tensor, not a state dict"),
    ("wide", "the first convolutions declare widths [60000, 160, 320, 640]"),
])
def test_key_and_shape_errors_name_the_key(l2l_net, tmp_path, capsys, case, expected):
    emb = dict(l2l_net.features.state_dict())
    head = {"scale": torch.tensor([1.0])}
    if case == "missing":
        del emb["layer3.0.bn2.running_var"]
    elif case == "shape":
        emb["layer2.0.conv2.weight"] = emb["layer2.0.conv2.weight"][..., :1]
    elif case == "unexpected":
        emb["layer2.0.fc.weight"] = torch.zeros(2)
    elif case == "head":
        head["temperature"] = torch.ones(1)
    elif case == "nan":
        emb["layer2.0.conv2.weight"] = emb["layer2.0.conv2.weight"].clone()
        emb["layer2.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    elif case == "head_nan":
        head["scale"] = torch.tensor([float("inf")])
    elif case == "head_tensor":
        head = torch.ones(3)
    elif case == "wide":   # a small file declaring a 60000-channel first convolution
        emb["layer1.0.conv1.weight"] = torch.zeros(60000, 3, 1, 1)
    src = tmp_path / "bad.pth"
    torch.save(emb if case == "not_a_dict" else {"embedding": emb, "head": head}, src)
    err = _err(capsys, ["import", str(src), "--from", "metaoptnet", "--dataset", "fc100",
                        "--out", str(tmp_path / "o.pt")])
    assert expected in err and str(src) in err
    assert not (tmp_path / "o.pt").exists()


def test_evaluate_and_compare_on_an_imported_backbone(l2l_net, tmp_path):
    root = tmp_path / "data"
    write_metaoptnet_cifar(str(root), "cifar-fs", per_class=4, n_classes={"train": 5, "val": 5, "test": 5})
    src = tmp_path / "best_model.pth"
    torch.save({"embedding": l2l_net.features.state_dict(), "head": {"scale": torch.tensor([3.0])}}, src)
    dst = tmp_path / "imported.pt"
    assert main(["import", str(src), "--from", "metaoptnet", "--dataset", "cifar-fs", "--data-root", str(root),
                 "--out", str(dst)]) == 0
    flags = ["--shot", "1", "--episodes", "2", "--query", "2", "--no-progress", "--device", "cpu"]
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--checkpoint", str(dst), "--head", "group-sparse-svm", "--out", str(out), *flags]) == 0
    res = json.loads(out.read_text())["results"]["1"]
    assert res["episodes"] == 2 and res["n_features"] == 2560
    assert main(["compare", str(dst), "--lambda-ratios", "0.1", "--out", str(tmp_path / "cmp"), *flags]) == 0
    names = [r["name"] for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["shots"]["1"]]
    assert names == ["svm", "group-sparse-svm(r=0.1)"]


def test_a_crafted_import_file_is_refused_without_torchs_advice(tmp_path, capsys):
    """torch's weights_only error suggests loading with weights_only=False: never for these."""
    class Runs:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "code-ran"),))
    src = tmp_path / "evil.pth"
    torch.save({"embedding": {"x": Runs()}}, src)
    err = _err(capsys, ["import", str(src), "--from", "metaoptnet", "--dataset", "fc100",
                        "--out", str(tmp_path / "o.pt")])
    assert "it references posix.mkdir" in err and "weights_only" not in err
    assert not (tmp_path / "code-ran").exists() and not (tmp_path / "o.pt").exists()
