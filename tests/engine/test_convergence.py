"""Inner-solver convergence in training and evaluation: metrics keys, one warning per epoch
(or evaluation), strict mode, exact resume of the epoch statistics, DDP max-reduce."""
import os
import re
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from metasparse.engine.checkpoint import load_checkpoint, save_checkpoint
from metasparse.engine.evaluate import evaluate_episodes
from metasparse.engine.train import read_jsonl, train
from metasparse.heads import GroupSparseSVMHead, RidgeHead, SolverConvergenceError, SolverConvergenceWarning

from .helpers import SPEC, GapReportingHead, tiny_model, tiny_streams
from .test_train import _free_port, _settings

CPU = torch.device("cpu")
# one FISTA iteration without dual smoothing (so no Newton finish): stops short of tol = 1e-5
# (with dual_reg > 0 these 6-feature problems may be solved exactly by the first Newton step)
SHORT = dict(lambda1=0.01, dual_reg=0.0, max_iter=1)
EPISODES_PER_EPOCH = 4 * 4                     # _settings: 4 batches of 4 episodes (tiny_streams)


def _short_head():
    return GroupSparseSVMHead(**SHORT)


def _train(tmp, make_head=None, *, settings=None, stop=None, resume=False, val=0):
    """Train the tiny MLP with ``make_head()`` (None: the PrototypeHead, which reports nothing);
    returns the model, train's result and the messages of the SolverConvergenceWarnings."""
    settings = settings or _settings()
    model = tiny_model(head=make_head() if make_head is not None else None)
    stream, val_eps = tiny_streams(batches=settings.batches_per_epoch, val=val)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(model, stream, val_eps, settings, tmp, spec=SPEC, device=CPU, resume=resume,
                    progress=False, stop_after_steps=stop)
    found = [str(w.message) for w in caught if issubclass(w.category, SolverConvergenceWarning)]
    return model, res, found


def _records(run, kind):
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == kind]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "data_wait_fraction")} for r in records]


def test_unconverged_solves_are_logged_and_warned_once_per_epoch(tmp_path):
    _, _, found = _train(tmp_path, _short_head)
    steps, epochs = _records(tmp_path, "step"), _records(tmp_path, "epoch")
    assert len(steps) == 8 and len(epochs) == 2 and len(found) == 2
    for e, (ep, msg) in enumerate(zip(epochs, found), start=1):
        st = [r for r in steps if r["epoch"] == e]
        n_bad = round(sum(4 * r["unconverged_fraction"] for r in st))
        assert n_bad > 0 and all(r["max_rel_gap"] >= 0 for r in st)
        assert ep["train_max_rel_gap"] == max(r["max_rel_gap"] for r in st) > 1e-5
        assert ep["train_unconverged_fraction"] == pytest.approx(n_bad / EPISODES_PER_EPOCH)
        assert msg.startswith(f"epoch {e}/2: {n_bad} of {EPISODES_PER_EPOCH} episodes stopped short")
        assert f"{ep['train_max_rel_gap']:.3g} > tol 1e-05" in msg and "max_iter" in msg


def test_converged_head_logs_zero_and_does_not_warn(tmp_path):
    # strict: any unconverged episode (training) would raise; validation would warn
    _, res, found = _train(tmp_path, GroupSparseSVMHead, settings=_settings(strict_solver=True), val=4)
    assert not res["stopped"] and found == []
    steps, epochs = _records(tmp_path, "step"), _records(tmp_path, "epoch")
    assert all(r["unconverged_fraction"] == 0 and r["max_rel_gap"] <= 1e-5 for r in steps)
    assert all(r["train_unconverged_fraction"] == 0 and r["train_max_rel_gap"] <= 1e-5 for r in epochs)
    assert all(r["val_unconverged_episodes"] == 0 and r["val_max_rel_gap"] <= 1e-5 for r in epochs)


def test_heads_without_convergence_report_no_keys(tmp_path):
    _, _, found = _train(tmp_path)
    assert found == []
    for r in read_jsonl(tmp_path / "metrics.jsonl"):
        assert not {"max_rel_gap", "unconverged_fraction", "train_max_rel_gap", "train_unconverged_fraction"} & set(r)


def test_strict_solver_stops_before_the_update_and_the_run_resumes_exactly(tmp_path):
    full, _, _ = _train(tmp_path / "full", _short_head)
    cut = tmp_path / "cut"
    _train(cut, _short_head, stop=1)
    with pytest.raises(SolverConvergenceError) as err:
        _train(cut, _short_head, settings=_settings(strict_solver=True), resume=True)
    m = re.match(r"epoch 1/2, batch (\d)/4: (\d) of 4 episodes stopped short .*worst relative duality gap",
                 str(err.value))
    assert m and int(m.group(2)) > 0, str(err.value)
    # the failing step made no update and wrote nothing: last.pt is the step before it
    assert load_checkpoint(cut / "last.pt")["progress"]["global_step"] == int(m.group(1)) - 1
    resumed, res, _ = _train(cut, _short_head, resume=True)
    assert res["global_step"] == 8
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert _strip(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == _strip(read_jsonl(cut / "metrics.jsonl"))


@pytest.mark.parametrize("stop", [3, 6])   # mid-epoch 1 and mid-epoch 2
def test_solver_statistics_of_the_epoch_survive_a_resume(tmp_path, stop):
    """Epoch records after a resume equal those of an uninterrupted run, and so do the warnings."""
    _, _, warned = _train(tmp_path / "full", GapReportingHead)
    epochs = _records(tmp_path / "full", "epoch")
    # about a third of the episodes "miss": a resume that forgot the steps before it would differ
    assert any(0 < r["train_unconverged_fraction"] < 1 for r in epochs)
    cut = tmp_path / "cut"
    _train(cut, GapReportingHead, stop=stop)
    _, _, warned_after = _train(cut, GapReportingHead, resume=True)
    assert _strip(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == _strip(read_jsonl(cut / "metrics.jsonl"))
    assert warned_after == warned[stop // 4:]


def test_old_checkpoint_with_four_epoch_sums_resumes(tmp_path):
    _train(tmp_path / "full")
    cut = tmp_path / "cut"
    _train(cut, stop=3)
    ck = load_checkpoint(cut / "last.pt")
    assert len(ck["progress"]["epoch_sums"]) > 4
    ck["progress"]["epoch_sums"] = ck["progress"]["epoch_sums"][:4]    # the layout before solver statistics
    save_checkpoint(cut / "last.pt", {k: v for k, v in ck.items() if k not in ("format", "version", "path")})
    _, res, _ = _train(cut, resume=True)
    assert res["global_step"] == 8
    assert _strip(read_jsonl(tmp_path / "full" / "metrics.jsonl")) == _strip(read_jsonl(cut / "metrics.jsonl"))


def test_evaluation_reports_gaps_and_warns_once(tmp_path):
    model = tiny_model(head=_short_head())
    _, val = tiny_streams(val=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_episodes(model, val, CPU, progress=False, desc="val")
        plain = evaluate_episodes(model, val, CPU, head=RidgeHead(), progress=False).summary()
    found = [str(w.message) for w in caught if issubclass(w.category, SolverConvergenceWarning)]
    summ = res.summary()
    n_bad = int((~res.converged).sum())
    assert res.converged.shape == res.rel_gap.shape == (8,) and n_bad > 0
    assert summ["unconverged_episodes"] == n_bad and summ["max_rel_gap"] == float(res.rel_gap.max()) > 1e-5
    assert len(found) == 1 and found[0].startswith(f"val: {n_bad} of 8 episodes stopped short")
    assert "max_rel_gap" not in plain and "unconverged_episodes" not in plain


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from metasparse.engine.distributed import cleanup, init_distributed
    ctx = init_distributed("cpu")
    model = tiny_model(head=_short_head())
    stream, _ = tiny_streams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SolverConvergenceWarning)
        train(model, stream, None, _settings(checkpoint_every=0), out_dir, spec=SPEC, device=CPU, ctx=ctx,
              progress=False)
    cleanup(ctx)


def test_ddp_reports_the_worst_gap_and_counts_of_all_ranks(tmp_path):
    _train(tmp_path / "single", _short_head, settings=_settings(checkpoint_every=0))
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(ddp_dir)), nprocs=2, join=True)
    a, b = read_jsonl(tmp_path / "single" / "metrics.jsonl"), read_jsonl(ddp_dir / "metrics.jsonl")
    assert len(a) == len(b) == 10
    for x, y in zip(a, b):
        for key in ("max_rel_gap", "train_max_rel_gap"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-3)   # max of all ranks, not a mean
        for key in ("unconverged_fraction", "train_unconverged_fraction"):
            if key in x:
                assert y[key] == x[key]
