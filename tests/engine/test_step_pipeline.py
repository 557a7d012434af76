"""The training step at the GPU's pace: one host read per step (deferred by one step), the
errors it decides still raised before anything is written after a bad step, exact resume
with the deferred read between checkpoints, channels-last runs, the data-wait fraction."""
import collections
import re
import time

import pytest
import torch

from episodes.types import EpisodeBatch
from metasparse.backbones import ResNet12
from metasparse.engine.checkpoint import load_checkpoint
from metasparse.engine.config import TrainSettings
from metasparse.engine.model import FewShotModel
from metasparse.engine.train import read_jsonl, smoothed_cross_entropy, train
from metasparse.errors import ConfigError
from metasparse.heads import ProtoNetHead, SolverConvergenceError, SolverConvergenceWarning
from metasparse.profiling import count_ops

from .helpers import SPEC, GapReportingHead, Out, PrototypeHead, tiny_model, tiny_streams

CPU = torch.device("cpu")
WALL = ("elapsed_s", "data_wait_fraction")


def _strip(records):
    return [{k: v for k, v in r.items() if k not in WALL} for r in records]


class ImageStream:
    """Random 3-way 2-shot 2-query batches of 2 episodes of 3x32x32 images."""

    def __init__(self, n, delay=0.0):
        self.n, self.delay = n, delay

    def iter_epoch(self, epoch, start=0):
        for i in range(start, self.n):
            if self.delay:
                time.sleep(self.delay)
            g = torch.Generator().manual_seed(1000 * epoch + i)
            B, N, K, Q = 2, 3, 2, 2
            yield EpisodeBatch(torch.randn(B, N * K, 3, 32, 32, generator=g),
                               torch.arange(N).repeat_interleave(K).expand(B, -1).contiguous(),
                               torch.randn(B, N * Q, 3, 32, 32, generator=g),
                               torch.arange(N).repeat_interleave(Q).expand(B, -1).contiguous(),
                               torch.arange(N).expand(B, -1).contiguous())


def _resnet_model():
    torch.manual_seed(0)
    return FewShotModel(ResNet12(widths=(4, 4, 4, 4), dropblock_size=2), ProtoNetHead())


def _image_run(tmp, n, **kw):
    model = _resnet_model()
    s = TrainSettings(epochs=1, batches_per_epoch=n, lr=0.01, checkpoint_every=0, log_every=0)
    train(model, ImageStream(n), None, s, tmp, spec=SPEC, device=CPU, progress=False, **kw)
    return model


def test_a_training_step_reads_the_host_once(tmp_path):
    """Per step (difference of a 6-step and a 2-step epoch, so set-up, checkpoints and the
    epoch's end cancel): the engine and the backbone make one host read (the packed
    statistics); everything else is the head's own (counted on the head alone)."""
    counts = {}
    for n in (2, 6):
        with count_ops() as counts[n]:
            _image_run(tmp_path / str(n), n)
    per_step = (counts[6].host_syncs - counts[2].host_syncs) / 4
    sites = collections.Counter(counts[6].sync_sites)
    sites.subtract(counts[2].sync_sites)
    ours = sum(v for (op, site), v in sites.items() if "metasparse/engine" in site or "metasparse/backbones" in site)
    assert ours / 4 == 1, sites

    head = ProtoNetHead()
    support, query = torch.randn(2, 6, 64, requires_grad=True), torch.randn(2, 6, 64, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(2).expand(2, -1)
    head.predict(query, support, labels, 3)
    with count_ops() as alone:
        out = head.predict(query, support, labels, 3)
        smoothed_cross_entropy(out.logits, labels, 0.0).backward()
    assert per_step <= alone.host_syncs + 1, (per_step, alone.host_syncs, sites.most_common(8))


def test_the_loss_reads_no_labels_on_the_host():
    logits, labels = torch.randn(4, 5, 3), torch.randint(0, 3, (4, 5))
    with count_ops() as c:
        loss = smoothed_cross_entropy(logits, labels, 0.1)
    assert c.host_syncs == 0
    y = torch.nn.functional.one_hot(labels.reshape(-1), 3).float()
    y = y * 0.9 + (1 - y) * 0.05
    assert torch.equal(loss, -(y * torch.log_softmax(logits.reshape(-1, 3), -1)).sum(-1).mean())


def _settings(**kw):
    base = dict(epochs=2, batches_per_epoch=5, optimizer="sgd", lr=0.05, checkpoint_every=2, log_every=1, seed=3)
    base.update(kw)
    return TrainSettings(**base)


def _run(tmp, *, settings=None, stop=None, resume=False, head=None, dropout=0.2):
    settings = settings or _settings()
    model = tiny_model(dropout=dropout, head=head)
    stream, val = tiny_streams(batches=settings.batches_per_epoch)
    res = train(model, stream, val, settings, tmp, spec=SPEC, device=CPU, resume=resume, progress=False,
                stop_after_steps=stop)
    return model, res


@pytest.mark.parametrize("stop", [1, 3, 4, 7])   # between checkpoints (the read deferred) and on them
def test_resume_is_exact_with_the_read_deferred_between_checkpoints(tmp_path, stop):
    full, _ = _run(tmp_path / "full")
    _run(tmp_path / "cut", stop=stop)
    resumed, res = _run(tmp_path / "cut", resume=True)
    assert res["global_step"] == 10
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    recs = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert _strip(recs) == _strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl"))
    assert [r["batch"] for r in recs if r["kind"] == "step"] == [1, 2, 3, 4, 5] * 2


class NaNAt(PrototypeHead):
    """The PrototypeHead whose ``bad``-th call (1-based) returns NaN logits; with
    ``then_raise`` the call after it raises (as a head would on the NaN weights)."""

    def __init__(self, bad, then_raise=False):
        super().__init__()
        self.calls, self.bad, self.then_raise = 0, bad, then_raise

    def predict(self, query, support, support_labels, n_way):
        self.calls += 1
        out = super().predict(query, support, support_labels, n_way)
        if self.calls == self.bad + 1 and self.then_raise:
            raise RuntimeError("the next step failed")
        if self.calls == self.bad:
            return Out(out.logits * float("nan"), out.fit)
        return out


@pytest.mark.parametrize("bad,every,then_raise", [(3, 1, False), (3, 0, False), (3, 0, True), (3, 2, True),
                                                  (2, 2, False), (4, 2, True)])   # the bad step due for a checkpoint
def test_a_non_finite_loss_is_reported_for_its_step_and_never_saved(tmp_path, bad, every, then_raise):
    with pytest.raises(ConfigError, match=rf"epoch 1, batch {bad}: the loss is not finite; the training diverged"):
        _run(tmp_path, settings=_settings(checkpoint_every=every), head=NaNAt(bad, then_raise), dropout=0.0)
    steps = [r["batch"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, bad))                  # no record of the bad step or after it
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["progress"]["global_step"] == _checkpoint_before(bad, every, 5)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


class LateGapHead(GapReportingHead):
    tol = 0.5   # with tiny_model and _settings: the first unconverged episode is in batch 2 of epoch 2


def _checkpoint_before(g_bad, every, per_epoch):
    """The global step of the last ``last.pt`` written before global step ``g_bad``."""
    saved = [g for g in range(g_bad) if g % per_epoch == 0 or (every and (g % per_epoch) % every == 0)]
    return max(saved)


@pytest.mark.parametrize("every", [1, 0, 3])
def test_strict_solver_names_the_same_step_whether_or_not_the_read_is_deferred(tmp_path, every):
    s = _settings(checkpoint_every=every, strict_solver=True, batches_per_epoch=4)
    with pytest.raises(SolverConvergenceError) as err:
        _run(tmp_path, settings=s, head=LateGapHead(), dropout=0.0)
    m = re.match(r"epoch (\d)/2, batch (\d)/4: (\d) of 4 episodes stopped short", str(err.value))
    assert m, str(err.value)
    bad = (int(m.group(1)), int(m.group(2)))
    # the first batch with an unconverged episode, as the undeferred loop would name it
    with pytest.warns(SolverConvergenceWarning):
        _run(tmp_path / "lax", settings=_settings(batches_per_epoch=4), head=LateGapHead(), dropout=0.0)
    lax = [r for r in read_jsonl(tmp_path / "lax" / "metrics.jsonl")]
    first_bad = next((r["epoch"], r["batch"]) for r in lax if r["kind"] == "step" and r["unconverged_fraction"] > 0)
    assert bad == first_bad == (2, 2)
    g_bad = 4 * (bad[0] - 1) + bad[1]
    # nothing about the bad step (or after it) was written
    assert _strip(read_jsonl(tmp_path / "metrics.jsonl")) == _strip([r for r in lax if r["global_step"] < g_bad])
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["global_step"] == _checkpoint_before(g_bad, every, 4)


def test_data_wait_fraction_in_records(tmp_path, capsys):
    s = TrainSettings(epochs=1, batches_per_epoch=4, lr=0.01, checkpoint_every=0, log_every=2)
    model = _resnet_model()
    train(model, ImageStream(4, delay=0.25), None, s, tmp_path / "slow", spec=SPEC, device=CPU, progress=False)
    recs = read_jsonl(tmp_path / "slow" / "metrics.jsonl")
    assert [r["kind"] for r in recs] == ["step", "step", "epoch"]
    assert all(0.5 < r["data_wait_fraction"] <= 1 for r in recs), recs   # 0.25 s per batch vs a tiny step
    assert re.search(r"data wait \d+%", capsys.readouterr().out)
    train(_resnet_model(), ImageStream(4), None, s, tmp_path / "fast", spec=SPEC, device=CPU, progress=False)
    fast = read_jsonl(tmp_path / "fast" / "metrics.jsonl")
    assert all(0 <= r["data_wait_fraction"] < recs[i]["data_wait_fraction"] for i, r in enumerate(fast))


def test_channels_last_training_resumes_exactly_and_saves_plain_keys(tmp_path):
    s = TrainSettings(epochs=1, batches_per_epoch=4, lr=0.01, checkpoint_every=0, log_every=1, seed=1)

    def run(out, **kw):
        model = _resnet_model()
        res = train(model, ImageStream(4), None, s, out, spec=SPEC, device=CPU, progress=False,
                    channels_last=True, **kw)
        return model, res

    full, _ = run(tmp_path / "full")
    conv = full.backbone.stages[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and full.channels_last
    _, res = run(tmp_path / "cut", stop_after_steps=3)
    assert res["stopped"]
    resumed, _ = run(tmp_path / "cut", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    plain = _resnet_model()
    assert list(load_checkpoint(tmp_path / "full" / "last.pt")["model"]) == list(plain.state_dict())
    plain.load_state_dict(full.state_dict())   # loads into a contiguous model
    # channels-last changes the layout, not the function: same features up to rounding
    x = torch.randn(2, 5, 3, 32, 32)
    full.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(full.embed(x), plain.embed(x), rtol=1e-4, atol=1e-5)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward failed")


class BackwardFailsWhenUnconverged(LateGapHead):
    """A solver head whose backward fails on an unconverged solve (as an implicit backward
    may): the strict-solver error of the step, not the backward's, is what the user gets."""

    def predict(self, query, support, support_labels, n_way):
        out = super().predict(query, support, support_labels, n_way)
        if not bool(out.fit.converged.all()):
            return Out(_FailingBackward.apply(out.logits), out.fit)
        return out


def test_a_step_whose_backward_fails_still_reports_its_own_unconverged_solve(tmp_path):
    with pytest.raises(SolverConvergenceError, match=r"epoch 2/2, batch 2/4"):
        _run(tmp_path, settings=_settings(checkpoint_every=0, strict_solver=True, batches_per_epoch=4),
             head=BackwardFailsWhenUnconverged(), dropout=0.0)
    with pytest.raises(RuntimeError, match="backward failed"):   # without strict_solver: the failure itself
        _run(tmp_path / "lax", settings=_settings(checkpoint_every=0, batches_per_epoch=4),
             head=BackwardFailsWhenUnconverged(), dropout=0.0)
