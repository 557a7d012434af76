"""The shell scripts parse, and the throughput script runs (tiny sizes, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_check.sh", "reproduce_metaoptnet.sh"])
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_train_throughput_cpu_tiny(tmp_path):
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_throughput.py"), "--device", "cpu",
                        "--image-size", "16", "--widths", "4", "4", "8", "8", "--shot", "2", "--query", "2",
                        "--episodes-per-batch", "2", "--batches", "1", "--warmup", "0", "--heads", "gs-svm",
                        "svm-dual", "--json", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [x["head"] for x in rows] == ["group-sparse-svm (dual)", "svm (dual)"]
    assert all(x["episodes_per_s"] > 0 for x in rows)
