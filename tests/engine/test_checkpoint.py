"""Checkpoints: atomic writes, weights_only loading, clear errors; RNG capture; bf16 autocast model."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from metasparse.engine import checkpoint as C
from metasparse.engine.evaluate import evaluate_episodes

from .helpers import tiny_model, tiny_streams


def _payload():
    return {"config": {"a": 1}, "backbone": {"name": "mlp", "options": {}}, "head": {"name": "x", "options": {}},
            "model": {"w": torch.ones(2)}, "rng": C.capture_rng()}


def test_roundtrip_and_run_directory(tmp_path):
    C.save_checkpoint(tmp_path / "last.pt", _payload())
    ck = C.load_checkpoint(tmp_path)          # a run directory resolves to best.pt / last.pt
    assert ck["format"] == C.FORMAT and torch.equal(ck["model"]["w"], torch.ones(2))
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_code_in_file_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"format": C.FORMAT, "model": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="not a loadable metasparse checkpoint"):
        C.load_checkpoint(p)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    C.save_checkpoint(p, _payload())
    before = p.read_bytes()

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        C.save_checkpoint(p, _payload())
    assert p.read_bytes() == before and [x for x in os.listdir(tmp_path) if x.endswith(".tmp")] == []


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="without best.pt"):
        C.load_checkpoint(tmp_path)
    torch.save({"format": C.FORMAT, "version": 99, "config": {}, "backbone": {}, "head": {}, "model": {}},
               tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer"):
        C.load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(ValueError, match="lacks"):
        C.save_checkpoint(tmp_path / "x.pt", {"model": {}})


def test_rng_capture_restore():
    state = C.capture_rng()
    a = (torch.rand(3), np.random.rand(), random.random())
    C.restore_rng(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_bf16_autocast_backbone_gives_float_features_and_gradients():
    m = tiny_model()
    m.amp = True
    x = torch.randn(2, 6, 6)
    f = m.embed(x)
    assert f.dtype == torch.float32
    logits, fit = m(x, torch.tensor([[0, 0, 1, 1, 2, 2]] * 2), x, 3)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_evaluation_does_not_depend_on_batch_size():
    m = tiny_model()
    _, val = tiny_streams(val=8)
    r1 = evaluate_episodes(m, val, torch.device("cpu"), progress=False)
    val.batch_size = 3
    r2 = evaluate_episodes(m, val, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(r1.accuracy, r2.accuracy)
    assert r1.n_episodes == 8 and r1.feature_usage.shape == (6,) and r1.feature_usage.max() <= 8


def test_random_bytes_inside_a_tensor_record_are_detected(tmp_path):
    """torch.load checks no checksum: a checkpoint whose tensor bytes were damaged used to
    load as (wrong) weights. The CRC-32 recorded at save time is checked on load."""
    import zipfile
    import pytest
    from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint
    from metasparse.errors import CheckpointError
    path = tmp_path / "ck.pt"
    w = torch.arange(1000, dtype=torch.float32)
    save_checkpoint(path, {"config": {"a": 1}, "model": {"w": w}, "optimizer": None})
    assert torch.equal(load_checkpoint(path)["model"]["w"], w) and "tensor_crc32" not in load_checkpoint(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)   # local header, then data
    raw[start + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        load_checkpoint(path)
