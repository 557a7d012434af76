"""The run-directory lock: two trainings into one --out, a held lock, a stale lock."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from reliability_helpers import SYN, one_line_error, run_cli, subprocess_env
from metasparse.engine.checkpoint import load_checkpoint
from metasparse.engine.runlock import LOCK_NAME, RunLock, lock_owner


def test_second_training_into_the_same_out_is_refused_and_the_first_finishes_intact(tmp_path, capsys):
    out = tmp_path / "run"
    syn_a = [a if a != "2" or SYN[i - 1] != "--batches-per-epoch" else "20" for i, a in enumerate(SYN)]
    a = subprocess.Popen([sys.executable, "-m", "metasparse", "train", *syn_a, "--seed", "1",
                          "--log-every", "1", "--out", str(out)],
                         env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while (lock_owner(out) or {}).get("pid") != a.pid:
            assert a.poll() is None, a.communicate()
            assert time.time() < deadline, "run A never took the lock"
            time.sleep(0.05)
        os.kill(a.pid, signal.SIGSTOP)   # A holds the lock, whatever the machine's speed
        # run B (a different seed) while A holds the lock: one line, nothing touched
        line = one_line_error(capsys, ["train", *SYN, "--seed", "2", "--out", out],
                              f"--out {out} is in use by another training", f"pid {a.pid}")
        assert "choose another --out" in line
        # --resume is refused the same way
        one_line_error(capsys, ["train", "--out", out, "--resume", "--no-progress"], f"pid {a.pid}")
        os.kill(a.pid, signal.SIGCONT)
        stdout, stderr = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
    assert a.returncode == 0, stderr
    assert "best validation accuracy" in stdout
    assert not (out / LOCK_NAME).exists()   # released on exit
    assert json.loads((out / "config.json").read_text())["settings"]["seed"] == 1
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(out / name)["config"]["settings"]["seed"] == 1, name
    assert load_checkpoint(out / "last.pt")["progress"]["global_step"] == 20
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in recs if r["kind"] == "step"]
    assert steps == list(range(1, 21))   # all of A's records, in order, none of B's
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1]


def test_lock_of_a_live_holder_refuses_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):    # a live holder (this process, another open file)
        assert lock_owner(run)["pid"] == os.getpid()
        one_line_error(capsys, ["train", *SYN, "--out", run], "is in use by another training",
                       f"pid {os.getpid()}")
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    assert not (run / LOCK_NAME).exists()
    # the lock file a `kill -9`ed training leaves behind: stale, taken over
    (run / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": "elsewhere", "since": "then"}))
    lock = RunLock(run).acquire()
    try:
        assert lock.stale_owner["pid"] == 2 ** 22 + 7 and lock_owner(run)["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (run / LOCK_NAME).exists()


def test_lock_is_released_after_errors_and_interrupts(tmp_path, capsys, monkeypatch):
    import metasparse.api.training as training
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        assert (out / LOCK_NAME).exists()
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "run_engine", interrupted)
    rc = run_cli(capsys, ["train", *SYN, "--out", out])[0]
    assert rc == 130 and not (out / LOCK_NAME).exists()


def test_a_killed_training_leaves_a_stale_lock_that_resume_takes_over(tmp_path, capsys):
    """kill -9: no cleanup runs, the lock file stays; the kernel dropped the lock, so
    --resume takes it over and finishes the run with the weights of an uninterrupted one."""
    # long enough (200 batches) that the child is still training when it is killed
    args = [a if prev != "--batches-per-epoch" else "200" for prev, a in zip([None] + SYN[:-1], SYN)]
    ref = tmp_path / "ref"
    assert run_cli(capsys, ["train", *args, "--out", ref])[0] == 0
    out = tmp_path / "run"
    c = subprocess.Popen([sys.executable, "-m", "metasparse", "train", *args, "--out", str(out)],
                         env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while (lock_owner(out) or {}).get("pid") != c.pid or not (out / "last.pt").exists():
            assert c.poll() is None, "the training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(c.pid, signal.SIGSTOP)
        os.kill(c.pid, signal.SIGKILL)
        c.wait(timeout=60)
    finally:
        if c.poll() is None:
            c.kill()
    assert lock_owner(out)["pid"] == c.pid        # left behind, stale
    assert run_cli(capsys, ["train", "--out", out, "--resume", "--no-progress", "--device", "cpu"])[0] == 0
    assert not (out / LOCK_NAME).exists()
    a, b = load_checkpoint(out / "last.pt")["model"], load_checkpoint(ref / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("resume", [False, True])
def test_a_lock_file_that_is_a_symlink_is_never_followed(tmp_path, capsys, resume):
    """A planted ``train.lock -> ../victim.txt`` must not let a training overwrite (or
    delete) the file it points to: one-line error, victim and link untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to("../victim.txt")
    args = ["train", "--out", out, "--resume", "--no-progress", "--device", "cpu"] if resume else \
        ["train", *SYN, "--out", out]
    one_line_error(capsys, args, "symbolic link", str(out / LOCK_NAME))
    assert victim.read_text() == "precious\n" and (out / LOCK_NAME).is_symlink()
