"""Training engine: exact resume, metrics log, label smoothing, DDP equivalence (2 gloo processes)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from metasparse.engine.checkpoint import load_checkpoint
from metasparse.engine.config import TrainSettings, lr_factor
from metasparse.engine.train import read_jsonl, smoothed_cross_entropy, train

from .helpers import SPEC, tiny_model, tiny_streams

CPU = torch.device("cpu")


def _settings(**kw):
    base = dict(epochs=2, batches_per_epoch=4, optimizer="sgd", lr=0.05, checkpoint_every=1, log_every=1, seed=3)
    base.update(kw)
    return TrainSettings(**base)


def _run(tmp, stop=None, resume=False, dropout=0.2, settings=None):
    settings = settings or _settings()
    model = tiny_model(dropout=dropout)
    stream, val = tiny_streams(batches=settings.batches_per_epoch)
    res = train(model, stream, val, settings, tmp, spec=SPEC, device=CPU, resume=resume,
                progress=False, stop_after_steps=stop)
    return model, res


@pytest.mark.parametrize("stop", [3, 4])   # mid-epoch, and right at the end of epoch 1 (before validation)
def test_resume_matches_uninterrupted_run(tmp_path, stop):
    full, _ = _run(tmp_path / "full")
    _, res = _run(tmp_path / "cut", stop=stop)
    assert res["stopped"]
    resumed, res2 = _run(tmp_path / "cut", resume=True)
    assert not res2["stopped"] and res2["global_step"] == 8
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    wall = ("elapsed_s", "data_wait_fraction")   # wall-clock keys
    strip = lambda rs: [{k: v for k, v in r.items() if k not in wall} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl"))
    best = load_checkpoint(tmp_path / "cut" / "best.pt")
    assert best["best"]["epoch"] in (1, 2) and best["format"] == "metasparse-checkpoint"


def test_training_reduces_loss_and_logs(tmp_path):
    s = _settings(epochs=3, batches_per_epoch=6, lr=0.1, checkpoint_every=0)
    model, res = _run(tmp_path, settings=s, dropout=0.0)
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(0 <= r["val_accuracy"] <= 1 and r["val_ci95"] >= 0 for r in epochs)
    steps = [r for r in recs if r["kind"] == "step"]
    assert len(steps) == 18 and steps[-1]["loss"] < steps[0]["loss"] + 0.5
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_label_smoothing_matches_metaoptnet_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.randint(0, 5, (2, 6))
    eps = 0.1
    logp = torch.log_softmax(logits.reshape(-1, 5), -1)
    y = torch.full((12, 5), eps / 4)
    y[torch.arange(12), labels.reshape(-1)] = 1 - eps
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, eps), -(y * logp).sum(1).mean())
    torch.testing.assert_close(smoothed_cross_entropy(logits, labels, 0.0),
                               torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1)))


def test_lr_schedule_metaoptnet():   # 0-based epochs; MetaOptNet's first drop is in its (1-based) epoch 20
    s = TrainSettings(epochs=60)
    assert [lr_factor(e, s) for e in (0, 18, 19, 38, 39, 48, 49, 59)] == [1, 1, .06, .06, .012, .012, .0024, .0024]


# ----------------------------------------------------------------------------- DDP
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from metasparse.engine.distributed import cleanup, init_distributed
    ctx = init_distributed("cpu")
    model = tiny_model(dropout=0.0)
    stream, val = tiny_streams()
    train(model, stream, val, _settings(checkpoint_every=0), out_dir, spec=SPEC, device=CPU, ctx=ctx, progress=False)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup(ctx)


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    single, _ = _run(tmp_path / "single", dropout=0.0, settings=_settings(checkpoint_every=0))
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(ddp_dir)), nprocs=2, join=True)
    r0 = torch.load(ddp_dir / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_dir / "rank1.pt", weights_only=True)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r1[k], r0[k], rtol=0, atol=0)
    # same validation numbers in the log, written by rank 0 only
    a = [r for r in read_jsonl(tmp_path / "single" / "metrics.jsonl") if r["kind"] == "epoch"]
    b = [r for r in read_jsonl(ddp_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x["val_accuracy"] == pytest.approx(y["val_accuracy"], abs=1e-6)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
