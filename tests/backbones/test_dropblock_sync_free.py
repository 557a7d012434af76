"""DropBlock without host syncs: the ramp and gamma on the device, same masks as the
Python-float formula it replaced, no sync in a ResNet-12 forward pass in train mode."""
import pytest
import torch
import torch.nn.functional as F

from metasparse.backbones import DropBlock, ResNet12
from metasparse.profiling import count_ops


def _old_dropblock(x, t, block_size, drop_rate, ramp_steps):
    """The former forward pass (keep rate and gamma as Python floats), for counter ``t``
    (already incremented), on the current torch RNG."""
    b_eff = min(block_size, x.shape[2], x.shape[3])
    n, c, h, w = x.shape
    keep = 1.0 - drop_rate if ramp_steps <= 0 else max(1.0 - drop_rate * t / ramp_steps, 1.0 - drop_rate)
    gamma = (1.0 - keep) / b_eff ** 2 * (h * w) / ((h - b_eff + 1) * (w - b_eff + 1))
    if gamma <= 0.0:
        return x, None
    probs = torch.full((n, c, h - b_eff + 1, w - b_eff + 1), min(gamma, 1.0), dtype=x.dtype)
    seeds = torch.bernoulli(probs)
    pad = b_eff - 1
    dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), kernel_size=b_eff, stride=1)
    mask = 1.0 - dropped
    return x * mask * (mask.numel() / mask.sum().clamp_min(1.0)), probs


@pytest.mark.parametrize("block,rate,ramp,shape,dtype", [
    (2, 0.1, 40000, (6, 4, 4, 4), torch.float32),
    (5, 0.1, 7, (3, 5, 10, 10), torch.float32),      # ramp over after 7 passes: floor 1 - drop_rate
    (3, 0.3, 0, (2, 3, 9, 9), torch.float64),        # no ramp
    (5, 0.2, 13, (2, 2, 3, 3), torch.float32),       # block larger than the map: b_eff = 3
])
def test_same_output_and_random_stream_as_the_python_float_formula(block, rate, ramp, shape, dtype):
    db = DropBlock(block, rate, ramp).train()
    db.num_batches_tracked.fill_(3)                 # somewhere on the ramp (or past it)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        x = torch.randn(*shape, generator=g, dtype=dtype)
        t = int(db.num_batches_tracked) + 1
        torch.manual_seed(100 + step)
        expected, probs = _old_dropblock(x, t, block, rate, ramp)
        after_old = torch.rand(3)                     # the RNG position after the old draw
        torch.manual_seed(100 + step)
        got = db(x)
        assert torch.equal(torch.rand(3), after_old)  # same number of random numbers drawn
        assert torch.equal(got, expected), step
        assert int(db.num_batches_tracked) == t
        keep = db.keep_rate_tensor()
        assert keep.dtype == torch.float64 and db.keep_rate() == float(keep)
        if probs is not None:                         # the probabilities, bit for bit
            b_eff = min(block, shape[2], shape[3])
            gamma = ((1.0 - keep) / b_eff ** 2 * (shape[2] * shape[3])
                     / ((shape[2] - b_eff + 1) * (shape[3] - b_eff + 1))).clamp_max(1.0).to(dtype)
            assert torch.equal(gamma.expand_as(probs), probs)


def test_keep_rate_matches_the_python_ramp_exactly():
    db = DropBlock(2, 0.1, 40000)
    for t in (0, 1, 2, 3, 17, 12345, 39999, 40000, 40001, 10 ** 6):
        db.num_batches_tracked.fill_(t)
        assert db.keep_rate() == max(1.0 - 0.1 * t / 40000, 1.0 - 0.1)


def test_resnet12_train_forward_makes_no_host_sync():
    torch.manual_seed(0)
    m = ResNet12(widths=(4, 4, 4, 4), dropblock_size=2).train()
    x = torch.randn(6, 3, 32, 32)
    m(x)   # first pass outside the count (lazy initialisations)
    with count_ops() as c:
        out = m(x)
        out.sum().backward()
    assert c.host_syncs == 0, c.sync_sites.most_common(5)
    assert int(m.stages[2].dropblock.num_batches_tracked) == 2
