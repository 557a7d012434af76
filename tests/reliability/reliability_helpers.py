"""Helpers of the reliability suite: run the command line in-process and check that a
failure is one line (exit status 2, no traceback) and that nothing was deleted or changed.

``tests/`` goes on ``sys.path`` after the repository root so that ``fixtures_formats``
(the writers of the real data formats) imports (see its docstring for why not
``tests.fixtures_formats``). A module of its own rather than ``conftest``: several test
folders have a ``conftest.py``, and ``from conftest import ...`` would find whichever
pytest imported last.
"""
import hashlib
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(1, str(TESTS))

from metasparse.cli import main  # noqa: E402

# a tiny synthetic run (vectors, MLP, ridge head): about a second in-process
SYN_SOURCE = '{"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 12}'
SYN = ["--dataset", "synthetic", "--source-options", SYN_SOURCE, "--backbone-options", '{"hidden": [8]}',
       "--head", "ridge", "--epochs", "1", "--batches-per-epoch", "2", "--val-episodes", "2", "--way", "3",
       "--train-shot", "2", "--query", "2", "--val-shot", "2", "--val-query", "2", "--episodes-per-batch", "2",
       "--no-progress", "--device", "cpu"]
# a tiny image run (ResNet-12 of widths 4-8 on 32x32 CIFAR-FS pickles)
TINY_IMAGES = ["--backbone-options", '{"widths": [4, 4, 8, 8]}', "--way", "3", "--train-shot", "2", "--query", "2",
               "--episodes-per-batch", "2", "--val-episodes", "2", "--val-shot", "2", "--val-query", "2",
               "--epochs", "1", "--batches-per-epoch", "1", "--no-progress", "--device", "cpu"]
EVAL = ["--episodes", "2", "--query", "2", "--shot", "2", "--no-progress", "--device", "cpu"]


def run_cli(capsys, argv):
    """``(exit status, stdout, stderr)`` of ``metasparse ARGV`` run in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(capsys, argv, *needles, rc=2):
    """Run ``argv``; assert it failed with exit status ``rc`` and one line
    ``metasparse CMD: error: ...`` holding every string of ``needles``; return the line."""
    status, _, err = run_cli(capsys, argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == rc, (status, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"metasparse {argv[0]}: error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder) -> dict:
    """{relative path: sha1 of the content} of every file under ``folder`` (folders: None)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def subprocess_env():
    """Environment of a ``python -m metasparse`` child: this checkout first, one thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
