"""The GPU fast path's options: amp on by default for image backbones on CUDA (resolved and
recorded), --amp / --no-amp, --compile; cudnn.benchmark only while training on CUDA."""
import json

import pytest
import torch

from metasparse.api import TrainConfig
from metasparse.api import train as api_train
from metasparse.api.train_config import default_amp
from metasparse.cli.main import build_parser
from metasparse.cli.train import config_from_args
from metasparse.engine.train import _cudnn_benchmark
from metasparse.errors import ConfigError


def test_amp_defaults_on_for_image_backbones_on_cuda_only():
    assert default_amp("resnet12", "cuda") and default_amp("conv4", "cuda")
    assert not default_amp("mlp", "cuda") and not default_amp("resnet12", "cpu") and not default_amp("resnet12", None)
    cfg = TrainConfig(out="unused", dataset="cifar-fs", data_root="unused")
    assert cfg.run_config("cuda")["amp"] is True and cfg.run_config("cpu")["amp"] is False
    assert cfg.run_config()["amp"] is False
    off = TrainConfig(out="unused", dataset="cifar-fs", data_root="unused", amp=False)
    assert off.run_config("cuda")["amp"] is False
    assert TrainConfig(out="unused", dataset="synthetic").run_config("cuda")["amp"] is False


def test_flags():
    parse = build_parser().parse_args
    args = parse(["train", "--out", "x", "--dataset", "synthetic"])
    cfg = config_from_args(args)
    assert cfg.amp is None and cfg.compile is False
    cfg = config_from_args(parse(["train", "--out", "x", "--no-amp", "--compile"]))
    assert cfg.amp is False and cfg.compile is True
    assert config_from_args(parse(["train", "--out", "x", "--amp"])).amp is True


def test_resolved_amp_is_recorded_and_a_contradicting_no_amp_is_refused(tmp_path):
    out = tmp_path / "run"
    api_train(TrainConfig(out=out, dataset="synthetic", epochs=1, batches_per_epoch=2, val_episodes=0,
                          head="ridge", device="cpu", progress=False))
    saved = json.loads((out / "config.json").read_text())
    assert saved["amp"] is False
    saved["amp"] = True   # as a run created on CUDA with an image backbone would record it
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="--amp False contradicts the run being resumed"):
        TrainConfig(out=out, resume=True, amp=False).resumed_run_config(saved)
    assert TrainConfig(out=out, resume=True).resumed_run_config(saved)["amp"] is True


def test_cudnn_benchmark_only_on_cuda_and_restored():
    before = torch.backends.cudnn.benchmark
    with _cudnn_benchmark(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before
    try:
        torch.backends.cudnn.benchmark = False
        with _cudnn_benchmark(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before
