"""A user's own dataset, backbone and head, registered from outside the package
(tests/plugins/blobs_plugin.py) and used by name from the command line, the Python API
and the saved run configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasparse.errors import ConfigError
from metasparse.registry import BACKBONES, HEADS, head_entry, register_backbone, register_head

PLUGIN = Path(__file__).parent / "plugins" / "blobs_plugin.py"


def _run(args, cwd, plugins=str(PLUGIN), code=None):
    env = {**os.environ, "METASPARSE_PLUGINS": plugins, "COLUMNS": "400"}   # --help on long lines
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "metasparse", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_plugin_names_work_on_the_command_line(tmp_path):
    helped = _run(["train", "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "blobs" in helped.stdout and "nearest-mean" in helped.stdout and "tiny-net" in helped.stdout
    trained = _run(["train", "--dataset", "blobs", "--head", "NM", "--out", "run", "--device", "cpu",
                    "--no-progress"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["dataset"], cfg["backbone"], cfg["head"]) == ("blobs", "tiny-net", "nearest-mean")
    assert cfg["backbone_options"]["in_dim"] == 6 and cfg["n_features"] == cfg["backbone_options"]["out_dim"] == 6
    # the saved configuration names them: evaluate rebuilds the model from it
    ev = _run(["evaluate", "--checkpoint", "run/best.pt", "--shot", "1", "--episodes", "10", "--out", "ev.json",
               "--device", "cpu", "--no-progress"], tmp_path)
    assert ev.returncode == 0, ev.stderr
    acc = json.loads((tmp_path / "ev.json").read_text())
    assert "1" in json.dumps(acc)
    # without the plugin, the saved names are unknown: one line saying which
    missing = _run(["evaluate", "--checkpoint", "run/best.pt", "--shot", "1", "--out", "ev2.json"], tmp_path,
                   plugins="")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert "blobs" in missing.stderr or "tiny-net" in missing.stderr or "nearest-mean" in missing.stderr


def test_plugin_names_work_in_the_python_api(tmp_path):
    code = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("blobs_plugin", {str(PLUGIN)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import metasparse
run = metasparse.train(metasparse.TrainConfig(dataset="BLOBS", head="nearest-mean", out="api", device="cpu",
                                              progress=False, epochs=1))
ev = metasparse.evaluate(metasparse.EvalConfig(checkpoint=run.run_dir, device="cpu", progress=False,
                                               episodes=metasparse.EpisodeSpec(shots=[2], n_episodes=8)))
print(json.dumps({{"head": run.config["head"], "acc": ev.results[2]["accuracy"]}}))
"""
    out = _run([], tmp_path, plugins="", code=code)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["head"] == "nearest-mean" and 0.0 <= got["acc"] <= 1.0
    assert got["acc"] > 0.6   # well-separated blobs: a nearest-mean head on a learned linear map gets them


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('half-written plugin')\n")
    out = _run(["train", "--help"], tmp_path, plugins=str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "METASPARSE_PLUGINS: cannot import plugin" in out.stderr and "half-written plugin" in out.stderr


def test_registration_checks_what_it_is_given():
    with pytest.raises(ConfigError, match="a head of that name exists"):
        register_head("svm", HEADS["svm"].cls)
    with pytest.raises(ConfigError, match="expected a subclass of metasparse.heads.Head"):
        register_head("not-a-head", dict)
    with pytest.raises(ConfigError, match="a backbone of that name exists"):
        register_backbone("ResNet-12", lambda **kw: None)
    with pytest.raises(ConfigError, match="letters, digits and dashes"):
        register_backbone("my net!", lambda **kw: None)
    assert "my-net" not in BACKBONES
    with pytest.raises(ConfigError, match="alias 'svm' already names head 'svm'"):
        register_head("mine", HEADS["ridge"].cls, aliases=("svm",))
    assert "mine" not in HEADS and head_entry("svm").name == "svm"


def test_a_registered_head_takes_its_own_solver_values(tmp_path):
    """The solver values a head declares are accepted by name; others name the head's."""
    code = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("blobs_plugin", {str(PLUGIN)!r})
plugin = importlib.util.module_from_spec(spec); spec.loader.exec_module(plugin)
import metasparse
from metasparse.api.train_config import TrainConfig
metasparse.register_head("nm-solved", plugin.NearestMean, solvers=("exact",))
assert TrainConfig(out="x", dataset="blobs", head="nm-solved", solver="exact").solver == "exact"
try:
    TrainConfig(out="x", dataset="blobs", head="nm-solved", solver="dual")
except metasparse.ConfigError as e:
    print(e)
"""
    out = _run([], tmp_path, plugins="", code=code)
    assert out.returncode == 0, out.stderr
    assert "--solver 'dual': expected one of ['exact'] for --head nm-solved" in out.stdout


def test_plugin_files_are_modules_and_defaults_are_canonical(tmp_path):
    plugin = tmp_path / "dc_plugin.py"
    plugin.write_text("from __future__ import annotations\nimport dataclasses\n\n@dataclasses.dataclass\n"
                      "class Settings:\n    width: int = 3\n\nimport metasparse\n"
                      f"exec(open({str(PLUGIN)!r}).read().replace('\"blobs\"', '\"blobs2\"')"
                      ".replace('\"tiny-net\"', '\"tiny-net2\"').replace('\"nearest-mean\"', '\"nm2\"')"
                      ".replace('(\"nm\",)', '()'))\n"
                      "metasparse.register_dataset('blobs3', load_blobs, needs_data_root=False, "
                      "defaults={'head': 'SVM_CS', 'backbone': 'MLP'})\n")
    out = _run(["train", "--dataset", "blobs3", "--print-config"], tmp_path, plugins=str(plugin))
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert (cfg["head"], cfg["backbone"]) == ("svm", "mlp")
