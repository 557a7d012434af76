"""Training with DataLoader workers gives exactly the single-process run, also across a resume
that restarts in the middle of an epoch (the stream must skip to the right batch); the
image pipeline's persistent workers and augmentation on the device give the same episodes."""
import pytest
import torch

from metasparse.engine.config import TrainSettings
from metasparse.engine.streams import SamplerStream
from metasparse.engine.train import read_jsonl, train

from .helpers import SPEC, tiny_model, tiny_streams

CPU = torch.device("cpu")


def _run(out, workers, stop=None, resume=False, device=None):
    s = TrainSettings(epochs=2, batches_per_epoch=3, optimizer="sgd", lr=0.05, checkpoint_every=1, log_every=1,
                      seed=3)
    model = tiny_model(dropout=0.2)
    stream, val = tiny_streams(batches=s.batches_per_epoch, val=4)
    stream = SamplerStream(stream.sampler, stream.n_batches, num_workers=workers, device=device)
    assert stream.deferred == (device is not None)
    try:
        train(model, stream, val, s, out, spec=SPEC, device=CPU, resume=resume, progress=False,
              stop_after_steps=stop)
    finally:
        stream.close()
    return model


def test_two_workers_and_mid_epoch_resume_match_single_process(tmp_path):
    ref = _run(tmp_path / "w0", workers=0)
    _run(tmp_path / "w2", workers=2, stop=2)                  # stop inside epoch 1
    got = _run(tmp_path / "w2", workers=2, resume=True)
    for (k, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), k
    wall = ("elapsed_s", "data_wait_fraction")   # wall-clock keys
    strip = lambda rs: [{k: v for k, v in r.items() if k not in wall} for r in rs]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "w0" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "w2" / "metrics.jsonl"))


# -- the image pipeline: persistent workers, augmentation on the device -----------------------------

def _image_sampler(seed=0, transform="train"):
    from episodes.sampler import EpisodeSampler
    from episodes.sources.base import FewShotSource
    from episodes.sources.miniimagenet import MINI_IMAGENET_MEAN, MINI_IMAGENET_STD
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (8 * 12, 3, 84, 84), dtype=torch.uint8, generator=g)
    src = FewShotSource(data, torch.arange(8).repeat_interleave(12), "train", "mini-imagenet", MINI_IMAGENET_MEAN,
                        MINI_IMAGENET_STD)
    return EpisodeSampler(src, 5, 3, 2, 2, seed=seed, transform=transform)


def _assert_same(a, b, exact):
    for name in ("support_labels", "query_labels", "class_ids", "support_index", "query_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if exact:
        assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    else:
        torch.testing.assert_close(a.support, b.support, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.query, b.query, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 5])
def test_device_augmentation_stream_matches_cpu_augmentation_for_any_workers(seed):
    """Deferred augmentation (applied here on CPU tensors with the whole-batch device code
    path) gives the episodes of CPU augmentation, with 0 or 2 workers, at any start."""
    sampler = _image_sampler(seed)
    ref = SamplerStream(sampler, 4)
    streams = [SamplerStream(sampler, 4, num_workers=w, device="cpu") for w in (0, 2)]
    assert all(s.deferred for s in streams)
    try:
        for epoch, start in [(0, 0), (1, 2), (2, 0)]:
            want = list(ref.iter_epoch(epoch, start))
            assert len(want) == 4 - start
            for s in streams:
                got = list(s.iter_epoch(epoch, start))
                assert len(got) == len(want)
                for a, b in zip(want, got):
                    assert b.support.device == CPU and b.support.dtype == torch.float32
                    _assert_same(a, b, exact=False)
    finally:
        for s in streams:
            s.close()


def test_persistent_workers_serve_every_epoch_and_resume_positions():
    sampler = _image_sampler(1)
    stream = SamplerStream(sampler, 3, num_workers=2)
    try:
        first = list(stream.iter_epoch(0))
        pids = [w.pid for w in stream._loader._iterator._workers]
        later = list(stream.iter_epoch(1, 1))            # a resumed run's first (partial) epoch
        again = list(stream.iter_epoch(0))
        assert [w.pid for w in stream._loader._iterator._workers] == pids      # started once, not per epoch
        for i, b in enumerate(first):
            _assert_same(sampler.sample(0, i), b, exact=True)
            _assert_same(b, again[i], exact=True)
        for i, b in enumerate(later, start=1):
            _assert_same(sampler.sample(1, i), b, exact=True)
        # an epoch abandoned in the middle (a stopped run) does not leak into the next one
        it = stream.iter_epoch(2)
        next(it)
        nxt = list(stream.iter_epoch(3))
        assert len(nxt) == 3
        _assert_same(sampler.sample(3, 0), nxt[0], exact=True)
        with pytest.raises(RuntimeError, match="resumed after a later iter_epoch"):
            next(it)
    finally:
        stream.close()
    assert stream._loader is None


def test_stream_falls_back_for_transforms_that_cannot_defer():
    sampler = _image_sampler(2, transform=lambda x, generator=None: x.float())
    stream = SamplerStream(sampler, 2, device="cpu")
    assert not stream.deferred
    b = next(stream.iter_epoch(0))
    assert torch.equal(b.support, sampler.sample(0, 0).support)


def test_device_augmentation_makes_no_host_syncs():
    """What runs on the device (the whole-batch path, and the stream's finishing step)
    never reads back from it: counted on the CPU."""
    from metasparse.profiling import count_ops
    sampler = _image_sampler(3)
    t = sampler.transform
    images = torch.randint(0, 256, (24, 3, 84, 84), dtype=torch.uint8)
    params = t.sample_params(24, torch.Generator().manual_seed(0))
    t.augment(images, params)                     # the normalisation constants are copied once per device
    with count_ops() as counts:
        out = t.augment(images, params)
    assert counts.host_syncs == 0, counts.sync_sites
    torch.testing.assert_close(out, t(images, params=params), atol=1e-5, rtol=0)
    stream = SamplerStream(sampler, 2, device="cpu")
    raw = sampler.sample_deferred(0, 1)
    with count_ops() as counts:
        stream._finish(raw)
    assert counts.host_syncs == 0, counts.sync_sites


def test_training_with_deferred_batches_and_workers_matches_single_process(tmp_path):
    """The stream's device path (here on the CPU) through whole training runs, mid-epoch resume included."""
    ref = _run(tmp_path / "w0", workers=0)
    _run(tmp_path / "d2", workers=2, stop=2, device="cpu")
    got = _run(tmp_path / "d2", workers=2, resume=True, device="cpu")
    for (k, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), k
