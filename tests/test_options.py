"""The table of training options (metasparse.options) and what is derived from it."""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from metasparse.api import TrainConfig
from metasparse.engine.config import TrainSettings
from metasparse.errors import ConfigError
from metasparse.options import OPTIONS, add_flags, check_value, flag_values, markdown_table, option

ROOT = Path(__file__).resolve().parents[1]


def _parser():
    p = argparse.ArgumentParser()
    add_flags(p)
    return p


def test_trainconfig_fields_are_the_options_in_order():
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [o.name for o in OPTIONS]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for o in OPTIONS:
        if not o.required:
            assert defaults[o.name] == o.default, o.name
    assert TrainConfig.__doc__ and "lambda_ratio" in TrainConfig.__doc__


def test_settings_options_are_trainsettings_fields():
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    stored = [o.name for o in OPTIONS if o.stored == "settings"]
    assert stored and set(stored) <= names
    assert {o.on_resume for o in OPTIONS} <= {"same", "new-run", "may-change", "may-raise"}


def test_every_option_has_its_flag_and_nothing_given_is_none():
    p = _parser()
    args = p.parse_args([])
    assert all(getattr(args, o.name) is None for o in OPTIONS)
    assert flag_values(args) == {}
    argv = ["--out", "r", "--way", "7", "--lr", "0.5", "--head-options", '{"dual_reg": 2}', "--no-progress",
            "--no-amp", "--resume", "--strict-solver"]
    got = flag_values(p.parse_args(argv))
    assert got == {"out": "r", "way": 7, "lr": 0.5, "head_options": {"dual_reg": 2}, "progress": False,
                   "amp": False, "resume": True, "strict_solver": True}
    with pytest.raises(ConfigError, match="--head-options: expected a JSON object"):
        flag_values(p.parse_args(["--head-options", "[1]"]))


@pytest.mark.parametrize("name, bad, needle", [
    ("lr", 0.0, "--lr must be a finite number > 0, got 0.0"),
    ("lr", float("nan"), "--lr must be a finite number > 0"),
    ("way", 1, "--way must be an integer >= 2, got 1"),
    ("way", True, "--way must be an integer >= 2, got True"),
    ("label_smoothing", 1.0, r"--label-smoothing must be a finite number in \[0, 1\)"),
    ("seed", 2 ** 63, "--seed must be an integer that fits in 64 bits"),
    ("optimizer", "rmsprop", "--optimizer 'rmsprop': expected one of"),
    ("head_options", "{}", "--head-options must be a dict of options"),
])
def test_checks_come_from_the_table(name, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        check_value(option(name), bad)
    assert check_value(option("lr"), 1) == 1.0 and isinstance(check_value(option("lr"), 1), float)
    assert check_value(option("seed"), -2 ** 63) == -2 ** 63


def test_numpy_numbers_and_path_likes_are_taken(tmp_path):
    import numpy as np

    class Where:   # an os.PathLike that is neither str nor Path (pytest's tmpdir is one)
        def __fspath__(self):
            return str(tmp_path / "run")
    cfg = TrainConfig(out=Where(), data_root=Where(), dataset="synthetic", way=np.int64(5), lr=np.float32(0.5))
    assert cfg.out == tmp_path / "run" and cfg.way == 5 and type(cfg.way) is int and cfg.lr == 0.5
    with pytest.raises(ConfigError, match=r"--way must be an integer >= 2, got 5.0 \(float\)"):
        TrainConfig(out=tmp_path, way=5.0)


def test_the_same_check_names_the_file_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: -1\n")
    from metasparse.api.train_config import read_config_file
    with pytest.raises(ConfigError, match=re.escape(f"--config {f}: lr must be a finite number > 0, got -1")):
        read_config_file(f)


def test_resume_rules_come_from_the_table(tmp_path):
    saved = TrainConfig(out=tmp_path, dataset="synthetic", way=5, epochs=3).run_config()
    # "same": equal is fine, different is refused
    TrainConfig(out=tmp_path, resume=True, way=5).resumed_run_config(saved)
    with pytest.raises(ConfigError, match="--way 6 contradicts the run being resumed"):
        TrainConfig(out=tmp_path, resume=True, way=6).resumed_run_config(saved)
    with pytest.raises(ConfigError, match="--lr 0.5 contradicts"):
        TrainConfig(out=tmp_path, resume=True, lr=0.5).resumed_run_config(saved)
    # "new-run": refused even when equal
    with pytest.raises(ConfigError, match="--head-options cannot be changed when resuming"):
        TrainConfig(out=tmp_path, resume=True, head_options={}).resumed_run_config(saved)
    # "may-change" and "may-raise"
    got = TrainConfig(out=tmp_path, resume=True, data_root="elsewhere", strict_solver=True,
                      epochs=5).resumed_run_config(saved)
    assert got["data_root"] == "elsewhere" and got["settings"]["strict_solver"] is True
    assert got["settings"]["epochs"] == 5 and got["settings"]["lr_milestones"] == saved["settings"]["lr_milestones"]
    with pytest.raises(ConfigError, match="can only raise --epochs"):
        TrainConfig(out=tmp_path, resume=True, epochs=2).resumed_run_config(saved)
    assert saved["settings"]["epochs"] == 3   # the saved configuration is not modified


def test_file_round_trip(tmp_path):
    cfg = TrainConfig(out=tmp_path / "run", dataset="cifar_fs", head="gs-svm", lambda_ratio=0.01, way=5, lr=0.05,
                      head_options={"dual_reg": 1.0}, progress=False, resume=True)
    for name in ("c.yaml", "c.json"):
        back = TrainConfig.from_file(cfg.to_file(tmp_path / name))
        assert back == dataclasses.replace(cfg, resume=False)


def test_docs_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text()
    m = re.search(r"<!-- options:begin[^\n]*-->\n(.*?)\n<!-- options:end -->", text, re.S)
    assert m, "docs/cli.md lacks the options table"
    assert m.group(1) == markdown_table(), ("docs/cli.md's options table is out of date; regenerate it with "
                                            "python -c 'from metasparse.options import markdown_table; "
                                            "print(markdown_table())'")
