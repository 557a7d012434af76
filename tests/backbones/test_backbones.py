"""Backbones: output sizes, parameter counts against learn2learn, DropBlock behaviour."""
import numpy as np
import pytest
import torch

from metasparse.backbones import MLP, Conv4, DropBlock, ResNet12, build_backbone


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("size,block,expected", [(84, 5, 16000), (32, 2, 2560)])
def test_resnet12_output_size_and_params_match_learn2learn(size, block, expected):
    ResNet12Backbone = pytest.importorskip("learn2learn.vision.models.resnet12", reason="needs learn2learn "
                                           "(pip install 'metasparse[l2l]')").ResNet12Backbone

    torch.manual_seed(0)
    ours = ResNet12(dropblock_size=block, drop_rate=0.1, avg_pool=False).eval()
    theirs = ResNet12Backbone(avg_pool=False, wider=True, dropblock_dropout=0.1, dropblock_size=block).eval()
    assert _n_params(ours) == _n_params(theirs)
    assert ours.output_dim(size) == expected
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = ours(x)
    assert out.shape == (2, expected)
    # same architecture: loading their weights (in order) gives the same features
    their_sd = [v for k, v in theirs.state_dict().items()]
    our_keys = [k for k in ours.state_dict() if "dropblock" not in k]
    assert len(our_keys) == len(their_sd)
    ours.load_state_dict(dict(zip(our_keys, their_sd)), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_resnet12_avgpool_and_gradients():
    m = ResNet12(avg_pool=True, widths=(8, 8, 16, 16), dropblock_size=2)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    out = m(x)
    assert out.shape == (3, 16) and m.output_dim(32) == 16
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_conv4_sizes():
    m = Conv4().eval()
    assert m(torch.randn(2, 3, 84, 84)).shape == (2, 1600) == (2, m.output_dim(84))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_mlp_and_factory():
    m = build_backbone("mlp", in_dim=7, out_dim=3, hidden=(5,))
    assert isinstance(m, MLP) and m(torch.randn(4, 7)).shape == (4, 3)
    assert isinstance(build_backbone("ResNet-12", widths=(4, 4, 4, 4)), ResNet12)
    assert isinstance(build_backbone("conv4"), Conv4)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="bad options"):
        build_backbone("mlp", in_dim=3, out_dim=2, nonsense=1)


def test_dropblock_drops_whole_blocks_and_preserves_mean():
    torch.manual_seed(0)
    db = DropBlock(block_size=3, drop_rate=0.3, ramp_steps=0).train()
    x = torch.ones(64, 4, 9, 9)
    y = db(x)
    dropped = (y == 0)
    assert 0.15 < dropped.float().mean() < 0.45  # about drop_rate of the units
    # survivors are rescaled so the mean is preserved exactly
    torch.testing.assert_close(y.mean(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)
    # each dropped unit lies in a fully dropped 3x3 block
    z = dropped.float()
    pooled = torch.nn.functional.max_pool2d(
        -torch.nn.functional.max_pool2d(-torch.nn.functional.pad(z, (1, 1, 1, 1), value=1.0), 3, 1), 3, 1, padding=1)
    # opening of the dropped set (erode then dilate with 3x3) recovers it
    assert torch.equal(pooled * z, z)
    # eval mode is the identity, and the ramp counter is a saved buffer
    assert torch.equal(db.eval()(x), x)
    assert "num_batches_tracked" in db.state_dict()


def test_dropblock_ramp():
    db = DropBlock(block_size=2, drop_rate=0.1, ramp_steps=100).train()
    assert db.keep_rate() == 1.0
    db(torch.ones(1, 1, 4, 4))
    assert db.keep_rate() == pytest.approx(1 - 0.1 / 100)
    db.num_batches_tracked.fill_(10_000)
    assert db.keep_rate() == pytest.approx(0.9)


def test_mlp_unit_rows():
    """unit_rows: the output is h(x) @ (A / row norms)^T + b, computed here independently;
    rescaling a row of A leaves the features unchanged."""
    torch.manual_seed(0)
    for hidden in ((), (6,)):
        m = build_backbone("mlp", in_dim=5, out_dim=4, hidden=hidden, unit_rows=True)
        x = torch.randn(8, 5)
        h = m.net[:-1](x)
        a = m.net[-1].weight.detach().numpy()
        expect = h.detach().numpy() @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T + m.net[-1].bias.detach().numpy()
        np.testing.assert_allclose(m(x).detach().numpy(), expect, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            m.net[-1].weight[1] *= 7.0
        np.testing.assert_allclose(m(x).detach().numpy(), expect, rtol=1e-5, atol=1e-6)
    plain = build_backbone("mlp", in_dim=5, out_dim=4, hidden=())
    assert plain.unit_rows is False
