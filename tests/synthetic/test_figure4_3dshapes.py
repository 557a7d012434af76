"""scripts/figure4_3dshapes.py's core on a tiny 3D-Shapes file (reduced grid, random pixels): the
outputs' shape, the intervals, determinism, the row distribution, and the bad-input exit."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from metasparse.metrics import information_report

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "episodes"))
from test_shapes3d import write_release_layout  # noqa: E402


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fig4 = _load("figure4_3dshapes")
TINY = dict(rhos=(0.0, 0.6), seeds=2, image_size=16, pool_size=0, steps=3, classification_steps=2, n_eval=120,
            widths=(4, 4, 8, 8), hidden=16, tasks_per_step=2, n_support=8, n_query=8, inner_max_iter=50)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes") / "3dshapes.h5"
    write_release_layout(path, sizes=(2, 3, 2, 2, 4, 3))
    from episodes.sources.shapes3d import Shapes3DH5
    return Shapes3DH5(path, expected_sizes=None)


def test_core_writes_figure4_json_and_pngs(tmp_path, tiny_world):
    s = fig4.Settings(**TINY)
    res = fig4.experiment(s, tiny_world, tmp_path, progress=False)
    saved = json.loads((tmp_path / "figure4.json").read_text())
    assert set(saved["results"]) == {"0", "0.6"} and saved["0.6"] == saved["results"]["0.6"]
    for rho in ("0", "0.6"):
        assert set(saved[rho]) == set(fig4.METHODS)
        for m, rec in saved[rho].items():
            assert rec["n_seeds"] == 2 and 0 <= rec["mcc_mean"] <= 1 and len(rec["mcc_seeds"]) == 2
            a, b = rec["mcc_seeds"]
            assert rec["mcc_mean"] == pytest.approx((a + b) / 2)
            assert rec["mcc_ci95"] == pytest.approx(12.7062047 * abs(a - b) / 2, rel=1e-6)   # t_{0.975, 1} s / sqrt 2
            for key in ("mig", "sap", "modularity", "explicitness"):
                vals = rec[f"{key}_seeds"]
                assert len(vals) == 2 and rec[f"{key}_mean"] == pytest.approx(np.mean(vals))
                assert rec[f"{key}_ci95"] == pytest.approx(12.7062047 * abs(vals[0] - vals[1]) / 2, rel=1e-6)
                assert all(0 <= v <= 1 for v in vals)
    for name in ("figure4.png", "figure4_traversal.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert saved["world"]["grid"] == [2, 3, 2, 2, 4, 3] and res["settings"]["seeds"] == 2
    fig4.traversal_only(s, tiny_world, tmp_path / "t", 0.6, progress=False)
    assert (tmp_path / "t" / "figure4_traversal.png").stat().st_size > 1000
    assert not (tmp_path / "t" / "figure4.json").exists()


def test_same_seed_same_numbers_and_rho_distribution(tiny_world):
    s = fig4.Settings(**TINY)
    fw = fig4.FactorWorld(tiny_world, s, progress=False)
    np.testing.assert_allclose(fw.z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(fw.z.std(0), 1, atol=1e-12)
    cov = 0.4 * np.eye(6) + 0.6
    ref = multivariate_normal(np.zeros(6), cov).pdf(fw.z)
    np.testing.assert_allclose(fw.probabilities(0.6), ref / ref.sum(), rtol=1e-9)
    first, enc = fig4.train_one("group_lasso", 0.6, 1, fw, s, progress=False)
    again, _ = fig4.train_one("group_lasso", 0.6, 1, fw, s, progress=False)
    assert first["mcc"] == again["mcc"] and first["train_loss_last50"] == again["train_loss_last50"]
    for key in ("mig", "sap", "modularity", "explicitness"):
        assert first[key] == again[key]
    # the information scores are those of the codes against the grid indices of the scored rows
    pos = fig4.eval_positions(fw, s)
    ref = information_report(tiny_world.factor_indices(fw.rows[pos]), fig4.codes_of(enc, fw, pos),
                             discrete_factors=True, seed=1)
    assert {k: first[k] for k in ref} == ref
    pos, y, support = fig4.draw_tasks(fw, s, 0.6, 1, 0, "regression")
    assert pos.shape == (2, 16) and y.shape == (2, 16, 3) and (support.sum(1) == s.support_size).all()


def test_missing_data_root_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fig4.main(["--out", str(tmp_path / "o"), "--data-root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().count("\n") == 0 and "3dshapes.h5" in err
    assert not (tmp_path / "o").exists()


def test_parallel_workers_give_the_same_numbers(tiny_world):
    s = fig4.Settings(**{**TINY, "rhos": (0.3,), "seeds": 1, "methods": ("group_lasso", "ridge")})
    fw = fig4.FactorWorld(tiny_world, s, progress=False)
    serial, enc1 = fig4.run(s, fw, progress=False, workers=1)
    parallel, enc2 = fig4.run(s, fw, progress=False, workers=2)
    drop = lambda res: {m: {k: v for k, v in rec.items() if k != "train_seconds_mean"}  # noqa: E731
                        for m, rec in res["0.3"].items()}
    assert drop(serial) == drop(parallel) and set(enc1) == set(enc2) == {"group_lasso", "ridge"}


def test_one_seed_has_no_interval_and_prints(tmp_path, tiny_world, capsys):
    s = fig4.Settings(**{**TINY, "rhos": (0.3,), "seeds": 1, "methods": ("ridge",)})
    res = fig4.experiment(s, tiny_world, tmp_path, progress=False)
    saved = json.loads((tmp_path / "figure4.json").read_text())
    rec = saved["0.3"]["ridge"]
    assert all(rec[f"{key}_ci95"] is None for key in fig4.METRICS)      # null in the JSON, as identifiability's
    fig4.print_table(res)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:8] == ["rho", "method", "MCC", "DCI", "disentanglement", "MIG", "SAP", "modularity"]
    assert out[1].split() == ["0.3", "ridge"] + [f"{rec[f'{k}_mean']:.3f}" for k, _ in fig4.PANELS]


def test_traversal_flags_are_checked(tmp_path, capsys):
    for argv in (["--traversal-only"], ["--traversal-rho", "0.5"]):
        with pytest.raises(SystemExit) as e:
            fig4.main(["--out", str(tmp_path / "o"), "--no-progress", *argv])
        assert e.value.code == 2 and "--traversal" in capsys.readouterr().err


def test_classification_tasks_have_every_class_in_their_support(tiny_world):
    """The SVM heads refuse a support set missing a class: a task drawn that way gets new
    weights (its own generator), the tasks drawn well are left as they were."""
    s = fig4.Settings(**{**TINY, "classification_support": 6, "tasks_per_step": 8})
    fw = fig4.FactorWorld(tiny_world, s, progress=False)
    ns, b, k = fig4.support_images(s, "classification"), s.tasks_per_step, s.n_classes
    kept = redrawn = 0
    for step in range(10):
        pos, y, support = fig4.draw_tasks(fw, s, 0.6, 1, step, "classification")
        y = y.cpu().numpy()
        assert all(len(np.unique(y[t, :ns])) == k for t in range(b))
        # the first draw, replayed: the same positions, supports and weights
        rng = np.random.default_rng([s.world_seed, 1, 600, 0, step])
        assert np.array_equal(fw.sample(0.6, (b, ns + s.n_query), rng), pos)
        for t in range(b):
            assert np.array_equal(np.flatnonzero(support[t]), np.sort(rng.choice(6, s.support_size, replace=False)))
        first = np.einsum("bnm,bmk->bnk", fw.z[pos], rng.standard_normal((b, 6, k)) * support[:, :, None]).argmax(-1)
        for t in range(b):
            if len(np.unique(first[t, :ns])) == k:
                assert np.array_equal(first[t], y[t])   # a task drawn well keeps its labels
                kept += 1
            else:
                redrawn += 1
    assert kept > 0 and redrawn > 0   # six support images, three classes: some first draws miss a class
    again = fig4.draw_tasks(fw, s, 0.6, 1, 3, "classification")[1]
    assert np.array_equal(again.cpu().numpy(), fig4.draw_tasks(fw, s, 0.6, 1, 3, "classification")[1].cpu().numpy())
