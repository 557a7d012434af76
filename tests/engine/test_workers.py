"""Training with DataLoader workers gives exactly the single-process run, also across a resume
that restarts in the middle of an epoch (the stream must skip to the right batch)."""
import torch

from metasparse.engine.config import TrainSettings
from metasparse.engine.streams import SamplerStream
from metasparse.engine.train import read_jsonl, train

from .helpers import SPEC, tiny_model, tiny_streams

CPU = torch.device("cpu")


def _run(out, workers, stop=None, resume=False):
    s = TrainSettings(epochs=2, batches_per_epoch=3, optimizer="sgd", lr=0.05, checkpoint_every=1, log_every=1,
                      seed=3)
    model = tiny_model(dropout=0.2)
    stream, val = tiny_streams(batches=s.batches_per_epoch, val=4)
    stream = SamplerStream(stream.sampler, stream.n_batches, num_workers=workers)
    train(model, stream, val, s, out, spec=SPEC, device=CPU, resume=resume, progress=False, stop_after_steps=stop)
    return model


def test_two_workers_and_mid_epoch_resume_match_single_process(tmp_path):
    ref = _run(tmp_path / "w0", workers=0)
    _run(tmp_path / "w2", workers=2, stop=2)                  # stop inside epoch 1
    got = _run(tmp_path / "w2", workers=2, resume=True)
    for (k, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), k
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "w0" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "w2" / "metrics.jsonl"))
