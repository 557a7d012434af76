"""`metasparse demo --quick`: trains both heads on the synthetic source, compares them on the
same episodes and scores the learned representations against the ground-truth factors."""
import json

import pytest

from metasparse.api.demonstration import MARKER, claim_output
from metasparse.cli import main
from metasparse.errors import ConfigError


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "demo.json").read_text())
    dis = summary["disentanglement"]
    assert set(dis) == {"group-sparse-svm", "svm", "input x (no learning)"}
    for v in dis.values():
        assert 0 <= v["mcc"] <= 1 and v["r2"] <= 1
    for shot in ("1", "5"):
        rows = {r["name"]: r for r in summary["results"][shot]}
        assert set(rows) == {"group-sparse-svm", "svm"}
        assert rows["svm"]["features_used_fraction"] == 1.0          # lambda1 = 0 uses every feature
        assert rows["group-sparse-svm"]["features_used_fraction"] < 1.0
        assert rows["svm"]["paired_vs_reference"]["n"] == rows["group-sparse-svm"]["episodes"]
    for f in ("compare.json", "compare.md", "demo.md", "feature_usage_5shot.png", "accuracy_vs_sparsity_5shot.png",
              "group-sparse-svm/best.pt", "svm/best.pt"):
        assert (out / f).is_file(), f
    for head in ("svm", "group-sparse-svm"):         # the same unit-row linear encoder for both heads
        cfg = json.loads((out / head / "config.json").read_text())
        assert cfg["backbone_options"]["unit_rows"] is True and cfg["backbone_options"]["hidden"] == []
        assert cfg["source_options"]["noise_std"] == 0.5

    # a rerun into its own output replaces its runs, keeps a file it did not write
    notes = out / "svm" / "notes.txt"
    notes.write_text("mine")
    old_config = (out / "svm" / "config.json").read_text()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--epochs", "1", "--batches-per-epoch", "2",
                 "--episodes", "4"]) == 0
    assert notes.read_text() == "mine"
    assert (out / "svm" / "config.json").read_text() != old_config          # 1 epoch instead of 2
    assert json.loads((out / "demo.json").read_text())["episodes"] == 4


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("existing", ["svm/config.json", "group-sparse-svm/last.pt", "compare.json", "demo.md"])
def test_demo_refuses_outputs_it_did_not_create(tmp_path, capsys, existing):
    """A run or a file of the user's where the demo would write: one line, exit 2, nothing touched."""
    out = tmp_path / "runs"
    target = out / existing
    target.parent.mkdir(parents=True)
    target.write_text("{\"user\": 1}")
    (target.parent / "notes.txt").write_text("my notes")
    before = _tree(out)
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / existing.split("/")[0]) in err and "Traceback" not in err
    assert _tree(out) == before                      # nothing deleted, overwritten or added


def test_demo_ownership_record(tmp_path):
    """claim_output: a record it wrote lets it clear only training's files; a foreign record is refused."""
    out = tmp_path / "d"
    record = claim_output(out)
    assert set(record["run_dirs"]) == {"svm", "group-sparse-svm"} and "demo.json" in record["files"]
    run = out / "svm"
    run.mkdir()
    for name in ("config.json", "metrics.jsonl", "last.pt", ".last.pt.x1.tmp", "notes.md"):
        (run / name).write_text("x")
    (out / "demo.json").write_text("{}")
    claim_output(out)
    assert sorted(p.name for p in run.iterdir()) == ["notes.md"]
    assert (out / "demo.json").exists()              # overwritten at the end of the demo, not deleted
    (out / MARKER).write_text(json.dumps({"files": ["notes.md"]}))
    with pytest.raises(ConfigError, match="not a metasparse demo record"):
        claim_output(out)
    (out / MARKER).write_text("{")
    with pytest.raises(ConfigError, match="not a readable demo record"):
        claim_output(out)
    with pytest.raises(ConfigError, match="is a file"):
        claim_output(out / "demo.json")


def test_demo_keeps_a_users_files_and_never_follows_links(tmp_path):
    """A user's own hidden .x.tmp in a run folder stays; a run folder that is a symbolic
    link (with a planted ownership record) is refused before anything is deleted."""
    out = tmp_path / "d"
    claim_output(out)
    run = out / "svm"
    run.mkdir()
    for name in ("last.pt", ".mine.tmp", ".last.pt.ab12.tmp"):
        (run / name).write_text("x")
    claim_output(out)
    assert sorted(p.name for p in run.iterdir()) == [".mine.tmp"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "last.pt").write_text("precious")
    link = out / "group-sparse-svm"
    link.symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        claim_output(out)
    assert (elsewhere / "last.pt").read_text() == "precious"


def test_a_second_demo_into_the_same_out_stops_before_deleting(tmp_path, capsys):
    """The first demo's live run files used to be deleted by the second before it met the
    training lock; the demo now holds a lock of its own from its first step."""
    from metasparse.api.demonstration import DEMO_LOCK
    from metasparse.engine.runlock import RunLock
    out = tmp_path / "d"
    claim_output(out)
    (out / "svm").mkdir()
    (out / "svm" / "last.pt").write_text("live")
    with RunLock(out, name=DEMO_LOCK, what="demo"):        # the first demo, running
        assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is in use by another demo" in err and len(err.strip().splitlines()) == 1
    assert (out / "svm" / "last.pt").read_text() == "live"
