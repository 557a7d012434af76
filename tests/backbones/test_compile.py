"""``torch.compile`` of the backbone: no graph break, one graph for every batch size (per
mode), checkpoints without ``_orig_mod.``, and ``torch._dynamo`` imported only when asked."""
import subprocess
import sys

import pytest
import torch

from metasparse.backbones import Conv4, ResNet12
from metasparse.engine.model import FewShotModel
from metasparse.heads import ProtoNetHead


def _resnet():
    torch.manual_seed(0)
    return ResNet12(widths=(4, 4, 4, 4), dropblock_size=2)


@pytest.mark.parametrize("make", [_resnet, lambda: Conv4(hidden=4, out_channels=4)])
@pytest.mark.parametrize("training", [True, False])
def test_backbones_compile_without_graph_breaks(make, training):
    import torch._dynamo
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(make().train(training))(torch.randn(20, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_one_graph_per_mode_for_all_batch_sizes_and_plain_checkpoint_keys():
    """Support and query sets (and other episode counts) share the training graph, the
    evaluation batches the evaluation graph. (Batch sizes >= 16: on the CPU, oneDNN's choice
    of convolution backend changes at 16 and guards on it; cuDNN does not.)"""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = FewShotModel(_resnet(), ProtoNetHead())
    keys = list(model.state_dict())
    counter = CompileCounter()
    model.compile_backbone(backend=counter)
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert len(list(model.parameters())) == len(list(model.backbone.parameters())) + len(list(model.head.parameters()))
    model.train()
    labels = torch.arange(5).repeat_interleave(4).expand(2, -1)
    for episodes, shot, query in ((2, 4, 6), (2, 4, 6), (3, 4, 10), (4, 5, 8)):
        support = torch.randn(episodes, 5 * shot, 3, 32, 32)
        q = torch.randn(episodes, 5 * query, 3, 32, 32)
        f_s, f_q = model.embed(support), model.embed(q)
        assert f_s.shape == (episodes, 5 * shot, 16) and f_q.shape == (episodes, 5 * query, 16)
        (f_s.sum() + f_q.sum()).backward()
    assert counter.frame_count == 1
    model.eval()
    with torch.no_grad():
        for episodes in (4, 5, 8):
            model.embed(torch.randn(episodes, 20, 3, 32, 32))
    assert counter.frame_count == 2
    del labels


def test_compiled_backbone_matches_eager_and_follows_a_swapped_backbone():
    import torch._dynamo
    torch._dynamo.reset()
    model = FewShotModel(_resnet(), ProtoNetHead()).eval()
    x = torch.randn(2, 10, 3, 32, 32)
    with torch.no_grad():
        eager = model.embed(x)
        model.compile_backbone(backend="aot_eager")
        torch.testing.assert_close(model.embed(x), eager, rtol=1e-5, atol=1e-6)
        model.backbone = _resnet().eval()   # e.g. SyncBatchNorm conversion: the compiled module is stale
        torch.testing.assert_close(model.embed(x), eager, rtol=0, atol=0)


def test_importing_the_model_and_backbones_does_not_import_dynamo():
    code = ("import sys, metasparse.engine.model, metasparse.backbones, metasparse.cli.train; "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


class _Stream:
    """3-way 2-shot 2-query batches of 2 episodes of random 3x32x32 images."""

    def iter_epoch(self, epoch, start=0):
        from episodes.types import EpisodeBatch
        for i in range(start, 3):
            g = torch.Generator().manual_seed(i)
            labels = torch.arange(3).repeat_interleave(2).expand(2, -1).contiguous()
            yield EpisodeBatch(torch.randn(2, 6, 3, 32, 32, generator=g), labels,
                               torch.randn(2, 6, 3, 32, 32, generator=g), labels, torch.arange(3).expand(2, -1))


def test_training_with_a_compiled_backbone_saves_plain_checkpoints(tmp_path, monkeypatch):
    """engine.train(compile_backbone=True) (with the quick ``aot_eager`` backend in place of
    inductor): checkpoints hold the plain keys and load into an uncompiled model."""
    import functools

    import torch._dynamo

    from metasparse.engine.checkpoint import load_checkpoint
    from metasparse.engine.config import TrainSettings
    from metasparse.engine.train import train

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    s = TrainSettings(epochs=1, batches_per_epoch=3, lr=0.01, checkpoint_every=0, log_every=1)
    model = FewShotModel(_resnet(), ProtoNetHead())
    train(model, _Stream(), None, s, tmp_path, spec={"config": {}}, device=torch.device("cpu"),
          progress=False, compile_backbone=True)
    assert model.__dict__["_compiled_backbone"] is not None
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    plain = FewShotModel(_resnet(), ProtoNetHead())
    assert list(saved) == list(plain.state_dict())
    plain.load_state_dict(saved)
    assert int(saved["backbone.stages.2.dropblock.num_batches_tracked"]) == 6   # support + query, 3 steps
