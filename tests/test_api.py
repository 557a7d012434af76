"""The Python API (metasparse.train / evaluate / compare with typed configs): results equal
the command line's, configs are validated when made, bad input raises metasparse's own
errors, and the checkpoint's config is the one model specification (version 1 loads)."""
import json

import pytest
import torch

import metasparse
from metasparse.api import (CompareConfig, EpisodeSpec, EvalConfig, TrainConfig, compare, evaluate, load_model,
                            train)
from metasparse.cli import main
from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint
from metasparse.errors import (CheckpointError, CheckpointNotFoundError, ConfigError, DataError, DataNotFoundError,
                               MetasparseError)

SOURCE = {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}
TINY = dict(dataset="synthetic", source_options=SOURCE, head="group-sparse-svm", lambda_ratio=0.1, epochs=1,
            batches_per_epoch=2, val_episodes=2, way=3, query=3, episodes_per_batch=2, device="cpu", progress=False)
EPISODES = dict(shots=[2], n_episodes=4, query=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(TrainConfig(out=tmp_path_factory.mktemp("api") / "run", **TINY))


def test_train_result_and_checkpoint(run):
    assert not run.stopped and run.global_step == 2 and run.rank == 0 and run.best["epoch"] == 1
    assert json.loads((run.run_dir / "config.json").read_text()) == run.config
    assert run.config["head_options"] == {"lambda_ratio": 0.1} and run.config["n_features"] == 6
    ck = torch.load(run.run_dir / "best.pt", weights_only=True)
    assert ck["version"] == 2 and ck["config"] == run.config
    assert not {"backbone", "head", "settings"} & set(ck)       # config is the one specification
    model, loaded = load_model(run.run_dir)
    assert loaded["path"].endswith("best.pt") and model.backbone.output_dim() == 6


def test_evaluate_equals_the_command_line(run, tmp_path):
    res = evaluate(EvalConfig(checkpoint=run.run_dir, episodes=EpisodeSpec(**EPISODES), out=tmp_path / "api.json",
                              device="cpu", progress=False))
    assert main(["evaluate", "--checkpoint", str(run.run_dir), "--shot", "2", "--episodes", "4", "--query", "2",
                 "--out", str(tmp_path / "cli.json"), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "api.json").read_text()) == json.loads((tmp_path / "cli.json").read_text())
    assert res.payload() == json.loads(res.out.read_text()) and res.way == 3 and res.n_episodes == 4
    assert set(res.results) == {"2"} and res.head == res.trained_head == "group-sparse-svm"
    assert res.results[2] is res.results["2"] and 2 in res.results and res.results.get(3) is None
    # model.embed takes a plain image batch too (it used to read the images' channels as examples)
    from metasparse.backbones import build_backbone
    from metasparse.engine.model import FewShotModel
    from metasparse.heads import ProtoNetHead
    model = FewShotModel(build_backbone("resnet12", widths=[4, 4, 4, 4], dropblock_size=2), ProtoNetHead()).eval()
    images = torch.randn(3, 3, 32, 32)
    assert torch.allclose(model.embed(images), model.embed(images[None])[0]) and model.embed(images).shape == (3, 16)


def test_compare_and_swapped_heads(run, tmp_path):
    res = compare(CompareConfig([run.run_dir / "best.pt", run.run_dir / "last.pt"], heads=["gs-svm", "ridge"],
                                lambda_ratios=[0.05, 0.5], episodes=EpisodeSpec(**EPISODES), out=tmp_path / "cmp",
                                device="cpu", progress=False))
    names = [r["name"] for r in res.result["shots"]["2"]]
    assert names == [f"run/{f}:{h}" for f in ("best", "last")
                     for h in ("group-sparse-svm(r=0.05)", "group-sparse-svm(r=0.5)", "ridge")]
    assert res.markdown.startswith("Reference for paired differences") and res.way == 3
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["shots"] == res.result["shots"]
    with pytest.raises(ConfigError, match="entry names must be unique"):
        compare(CompareConfig([run.run_dir, run.run_dir], heads=["ridge"], episodes=EpisodeSpec(**EPISODES),
                              out=tmp_path / "dup", device="cpu", progress=False))


def test_version_1_checkpoints_still_load(run, tmp_path):
    ck = load_checkpoint(run.run_dir / "best.pt")
    cfg = ck["config"]
    v1 = {k: v for k, v in ck.items() if k not in ("format", "version", "path")}
    v1.update(backbone={"name": cfg["backbone"], "options": cfg["backbone_options"]},
              head={"name": cfg["head"], "options": cfg["head_options"]}, settings=cfg["settings"])
    save_checkpoint(tmp_path / "v1.pt", v1)
    data = torch.load(tmp_path / "v1.pt", weights_only=True)
    data["version"] = 1
    torch.save(data, tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt")
    assert not {"backbone", "head", "settings"} & set(loaded)
    spec = EpisodeSpec(**EPISODES)
    old = evaluate(EvalConfig(checkpoint=tmp_path / "v1.pt", episodes=spec, device="cpu", progress=False))
    new = evaluate(EvalConfig(checkpoint=run.run_dir / "best.pt", episodes=spec, out=tmp_path / "new.json",
                              device="cpu", progress=False))
    assert old.results == new.results


def test_configs_are_validated_when_made(tmp_path):
    cases = [
        (lambda: TrainConfig(out=tmp_path, dataset="synthetic", way=0), "--way must be an integer >= 2, got 0"),
        (lambda: TrainConfig(out=tmp_path, dataset="imagenet"), "--dataset 'imagenet'"),
        (lambda: TrainConfig(out=tmp_path, head="ridge", lambda_ratio=0.1), "applies to the group-sparse-svm"),
        (lambda: TrainConfig(out=tmp_path, backbone="vgg"), "expected resnet12, conv4 or mlp"),
        (lambda: TrainConfig(out=tmp_path, label_smoothing=1.0), r"must be a finite number in \[0, 1\)"),
        (lambda: TrainConfig(out=tmp_path, optimizer="rmsprop"), "--optimizer 'rmsprop'"),
        (lambda: TrainConfig(out=tmp_path, head_options="{}"), "must be a dict of options"),
        (lambda: EpisodeSpec(episodes_file="e.json", shots=[1]), "--shot contradicts --episodes-file"),
        (lambda: EpisodeSpec(shots=[0]), "--shot must be >= 1, got 0"),
        (lambda: EpisodeSpec(split="dev"), "--split 'dev'"),
        (lambda: EvalConfig(checkpoint="x.pt", head="protonet", solver="dual"), "applies to the SVM heads only"),
        (lambda: CompareConfig("x.pt"), "expected a list of checkpoints"),
    ]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message):
            make()
    assert TrainConfig(out=str(tmp_path), head="SVM_CS", backbone="MLP").head == "svm"


def test_bad_input_raises_metasparse_errors(run, tmp_path):
    with pytest.raises(ConfigError, match="--dataset is required"):
        train(TrainConfig(out=tmp_path / "x"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(TrainConfig(out=run.run_dir, **TINY))
    with pytest.raises(ConfigError, match="--lr 0.5 contradicts the run being resumed"):
        train(TrainConfig(out=run.run_dir, resume=True, lr=0.5))
    with pytest.raises(ConfigError, match="--source-options: synthetic takes no option"):
        train(TrainConfig(out=tmp_path / "s", dataset="synthetic", source_options={"colour": 1}))
    with pytest.raises(DataNotFoundError, match="does not exist") as e:
        train(TrainConfig(out=tmp_path / "c", dataset="cifar-fs", data_root=tmp_path / "nowhere"))
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(CheckpointNotFoundError):
        evaluate(EvalConfig(checkpoint=tmp_path / "nope.pt"))
    with pytest.raises(DataError, match="way N=9 exceeds"):
        evaluate(EvalConfig(checkpoint=run.run_dir, episodes=EpisodeSpec(shots=[1], way=9), device="cpu"))
    with pytest.raises(ConfigError, match="episode files must end in .json or .pt"):
        evaluate(EvalConfig(checkpoint=run.run_dir, episodes=EpisodeSpec(shots=[1], n_episodes=2,
                                                                         save_episodes=tmp_path / "e.txt"),
                            device="cpu", progress=False))
    torch.save({"format": "metasparse-checkpoint", "version": 2, "config": {"test": True}, "model": {}},
               tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        evaluate(EvalConfig(checkpoint=tmp_path / "bare.pt"))
    assert all(issubclass(c, MetasparseError) for c in (ConfigError, DataError, CheckpointError))


def test_top_level_names():
    assert metasparse.train is train and metasparse.TrainConfig is TrainConfig
    assert metasparse.ConfigError is ConfigError and "evaluate" in dir(metasparse)
    assert callable(metasparse.import_checkpoint) and "ImportConfig" in dir(metasparse)
    with pytest.raises(AttributeError):
        metasparse.nope
