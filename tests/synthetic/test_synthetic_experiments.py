"""Small, fast runs of the paper's two synthetic experiments, asserting the direction of the effect."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod              # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


fig1 = _load("figure1_generalization")
ident = _load("identifiability")


def test_figure1_disentangled_lasso_wins_when_sparse(tmp_path):
    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps({"0.05": {"disentangled-lasso": [0.5, 0.9]}, "0.8": {"entangled-ridge": [0.1, 0.2]}}))
    res = fig1.main(["--out", str(tmp_path), "--seeds", "3", "--n-factors", "40", "--ratios", "0.05", "0.8",
                     "--n-train", "20", "40", "--n-test", "300", "--no-progress", "--reference", str(ref),
                     "--compare-from", "30"])
    cmp = json.loads((tmp_path / "figure1_vs_reference.json").read_text())
    ours = [res["0.05"]["disentangled-lasso"]["r2_mean"][1], res["0.8"]["entangled-ridge"]["r2_mean"][1]]
    diffs = [abs(ours[0] - 0.9), abs(ours[1] - 0.2)]           # only n = 40 >= 30 counts
    assert cmp["n_points"] == 2 and set(cmp["curves"]) == {"0.05/disentangled-lasso", "0.8/entangled-ridge"}
    assert cmp["mean_abs_difference"] == pytest.approx(np.mean(diffs))
    assert cmp["max_abs_difference"] == pytest.approx(max(diffs))
    assert cmp["curves"]["0.05/disentangled-lasso"]["difference"][0] == pytest.approx(
        res["0.05"]["disentangled-lasso"]["r2_mean"][0] - 0.5)
    saved = json.loads((tmp_path / "figure1.json").read_text())
    assert saved == res and set(saved) == {"0.05", "0.8"}
    assert (tmp_path / "figure1.png").stat().st_size > 0
    for panel in saved.values():
        assert set(panel) == set(fig1.METHODS)
        for curve in panel.values():
            assert curve["n"] == [20, 40] and len(curve["r2_mean"]) == 2 and len(curve["r2_se"]) == 2
    sparse = saved["0.05"]
    assert all(d > e + 0.2 for d, e in zip(sparse["disentangled-lasso"]["r2_mean"],
                                           sparse["entangled-lasso"]["r2_mean"]))
    assert all(d > r for d, r in zip(sparse["disentangled-lasso"]["r2_mean"],
                                     sparse["disentangled-ridge"]["r2_mean"]))
    # ridge is invariant to the rotation L
    for panel in saved.values():
        np.testing.assert_allclose(panel["disentangled-ridge"]["r2_mean"], panel["entangled-ridge"]["r2_mean"],
                                   atol=1e-6)


def test_figure1_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        fig1.parse_args(["--out", "x", "--ratios", "1.5"])
    for bad in (["--rho", "1"], ["--lasso-folds", "1"], ["--reference", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit):
            fig1.parse_args(["--out", "x", *bad])
    with pytest.raises(ValueError, match="values for"):
        fig1.compare_to_reference({"0.05": {"entangled-lasso": {"n": [50, 75], "r2_mean": [0.1, 0.2]}}},
                                  {"0.05": {"entangled-lasso": [0.1]}})


def test_figure1_correlated_factors():
    """--rho: z ~ N(0, Sigma) with Sigma_ij = rho^|i-j| (checked on the covariance itself)."""
    sigma = fig1.factor_covariance(4, 0.5)
    np.testing.assert_allclose(sigma[0], [1, 0.5, 0.25, 0.125])
    a = fig1.run_one_seed(0.2, [30], 0, 20, 200, 0.04, rho=0.0)
    b = fig1.run_one_seed(0.2, [30], 0, 20, 200, 0.04, rho=0.6)
    assert a != b and a["disentangled-ridge"] == pytest.approx(a["entangled-ridge"], abs=1e-6)


class _TouchOnLoad:
    """Unpickling this would create ``path`` (a stand-in for code a pickle could run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_figure1_reads_the_authors_logs_without_running_code(tmp_path):
    """--reference logs.p: the authors' pickle (plain dicts / lists) is read and renamed
    to our curve names, the least-squares curves dropped; a pickle naming any class or
    function is refused before anything is built from it."""
    import pickle
    logs = {0.05: {"disent-lasso": {"mean": [0.6, 0.9], "s.e.": [0.1, 0.0]},
                   "ent-ridge": {"mean": [0.1, 0.4], "s.e.": [0.0, 0.0]},
                   "ent-lr": {"mean": [-0.1, 0.4], "s.e.": [0.0, 0.0]}}}
    path = tmp_path / "logs.p"
    path.write_bytes(pickle.dumps(logs))
    assert fig1.load_reference(path) == {"0.05": {"disentangled-lasso": [0.6, 0.9], "entangled-ridge": [0.1, 0.4]}}
    assert fig1.parse_args(["--out", "x", "--reference", str(path)]).reference_data["0.05"]["entangled-ridge"] == \
        [0.1, 0.4]
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps({0.05: _TouchOnLoad(marker)}))
    with pytest.raises(ValueError, match="only plain dicts"):
        fig1.load_reference(evil)
    with pytest.raises(SystemExit):
        fig1.parse_args(["--out", "x", "--reference", str(evil)])
    assert not marker.exists()
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not shaped"):
        fig1.load_reference(tmp_path / "bad.json")


def test_figure1_common_factor_and_positive_weights():
    """--correlation equal: Sigma = (1 - rho) I + rho 1 1^T; --weights positive draws |w| (the
    same draw: only signs change, so a rotation still leaves Ridge unchanged)."""
    sigma = fig1.factor_covariance(3, 0.2, "equal")
    np.testing.assert_allclose(sigma, [[1, 0.2, 0.2], [0.2, 1, 0.2], [0.2, 0.2, 1]])
    with pytest.raises(ValueError, match="correlation"):
        fig1.factor_covariance(3, 0.2, "banded")
    signed = fig1.run_one_seed(0.8, [15], 0, 40, 200, 0.04, rho=0.3, correlation="equal", weights="gaussian")
    positive = fig1.run_one_seed(0.8, [15], 0, 40, 200, 0.04, rho=0.3, correlation="equal", weights="positive")
    assert positive["disentangled-ridge"] == pytest.approx(positive["entangled-ridge"], abs=1e-6)
    # a dense positive task loads on the common factor, which Ridge learns from 15 samples (m = 40)
    assert positive["disentangled-ridge"][0] > signed["disentangled-ridge"][0] + 0.1
    with pytest.raises(SystemExit):
        fig1.parse_args(["--out", "x", "--weights", "uniform"])


def test_sparse_inner_problem_disentangles_better_than_ridge():
    settings = ident.Settings(steps=200, tasks_per_step=16, lr=3e-3, n_eval=600, n_eval_tasks=32, n_checkpoints=1)
    mixing = ident.make_world(settings)
    lasso = ident.train_config(ident.Config("group_lasso", 0.1), settings, mixing, progress=False)
    ridge = ident.train_config(ident.Config("ridge", 0.01), settings, mixing, progress=False)
    assert lasso["mcc"] > ridge["mcc"] + 0.1
    assert lasso["dci"]["disentanglement"] > ridge["dci"]["disentanglement"]
    assert lasso["used_features_mean"] < settings.n_factors == ridge["used_features_mean"]
    assert lasso["assumption7"] is True


def test_group_sparse_svm_head_disentangles_better_than_vanilla_svm():
    settings = ident.Settings(classification_steps=50, tasks_per_step=8, lr=3e-3, n_eval=600, n_eval_tasks=16,
                              n_checkpoints=1)
    mixing = ident.make_world(settings)
    sparse = ident.train_config(ident.Config("group_sparse_svm", 0.2, task="classification"), settings, mixing,
                                progress=False)
    vanilla = ident.train_config(ident.Config("group_sparse_svm", 0.0, task="classification"), settings, mixing,
                                 progress=False)
    assert sparse["mcc"] > vanilla["mcc"] + 0.1
    assert sparse["used_features_mean"] < settings.n_factors == vanilla["used_features_mean"]


def test_identifiability_cli_writes_results(tmp_path):
    res = ident.main(["--out", str(tmp_path), "--steps", "3", "--tasks-per-step", "4", "--lasso-ratios", "0.1",
                      "--ridge-lams", "0.1", "--no-classification", "--no-progress", "--seeds", "2", "--n-eval", "400"])
    saved = json.loads((tmp_path / "identifiability.json").read_text())
    assert len(saved["configs"]) == 4 == len(res["configs"])
    kinds = {(c["inner"], c["supports"]): c for c in saved["configs"]}
    assert set(kinds) == {("group_lasso", "random"), ("group_lasso", "blocks"), ("ridge", "random"),
                          ("ridge", "blocks")}
    assert kinds[("group_lasso", "blocks")]["assumption7"] is False and saved["settings"]["n_eval"] == 400
    for c in saved["configs"]:
        assert {"inner", "regularization", "mcc", "r2", "dci", "used_features_mean"} <= set(c)
        assert set(c["dci"]) == {"disentanglement", "completeness", "informativeness"}
        # mean, per-seed values and the Student-t 95% half-width, recomputed here
        assert c["seeds"] == [0, 1] and len(c["mcc_seeds"]) == 2 == len(c["per_seed"])
        assert c["mcc"] == pytest.approx(np.mean(c["mcc_seeds"]))
        assert [r["mcc"] for r in c["per_seed"]] == c["mcc_seeds"] and c["mcc_seeds"][0] != c["mcc_seeds"][1]
        assert c["mcc_ci95"] == pytest.approx(12.7062047 * abs(c["mcc_seeds"][0] - c["mcc_seeds"][1]) / 2)
        for key in ("mig", "sap", "modularity", "explicitness"):
            vals = c[f"{key}_seeds"]
            assert vals == [r[key] for r in c["per_seed"]] and c[key] == pytest.approx(np.mean(vals))
            assert c[f"{key}_ci95"] == pytest.approx(12.7062047 * abs(vals[0] - vals[1]) / 2)
            assert all(0 <= v <= 1 for v in vals)
    x = saved["baselines"]["observations_x"]
    assert x["mig"] == pytest.approx(np.mean([r["mig"] for r in x["per_seed"]])) and 0.5 <= x["explicitness"] <= 1
    for name in ("identifiability_mcc.png", "identifiability_training.png", "identifiability_supports.png"):
        assert (tmp_path / name).stat().st_size > 0
    for bad in (["--support-size", "3", "--block-size", "2"], ["--n-eval", "10"]):
        with pytest.raises(SystemExit):
            ident.parse_args(["--out", "x", *bad])
    replot = ident.main(["--out", str(tmp_path), "--plot-only"])
    assert replot == saved
    with pytest.raises(FileNotFoundError, match="identifiability.json"):
        ident.main(["--out", str(tmp_path / "empty"), "--plot-only"])


def test_identifiability_ci95_and_workers():
    from metasparse.metrics.accuracy import mean_t_ci
    rec = {"name": "a", "task": "regression", "inner": "ridge", "regularization": {"name": "lam", "value": 0.1},
           "supports": "random", "true_support_size": 4, "assumption7": True, "seed": 0,
           "dci": {"disentanglement": 0.5}, "history": [{"step": 0, "mcc": 0.1, "r2": 0.2}],
           "example_true_supports": [], "example_used_factors": [],
           **{k: 0.5 for k in ident._MEAN_KEYS}}
    one = ident.aggregate([rec])
    assert one["mcc_ci95"] is None and one["mig_ci95"] is None          # one seed: no interval (null in the JSON)
    v = [0.2, 0.5, 0.4, 0.9, 0.7]
    five = ident.aggregate([{**rec, "mcc": a, "sap": a} for a in v])
    assert five["mcc_ci95"] == five["sap_ci95"] == mean_t_ci(v)
    assert five["mcc_ci95"] == pytest.approx(2.7764451 * np.std(v, ddof=1) / np.sqrt(5))
    with pytest.raises(SystemExit):
        ident.parse_args(["--out", "x", "--seeds", "0"])
    settings = ident.Settings(steps=2, tasks_per_step=4, n_eval=200, n_eval_tasks=4, n_checkpoints=1)
    cfgs = [ident.Config("group_lasso", 0.1)]
    serial = ident.run(settings, cfgs, progress=False, seeds=2, workers=1)
    parallel = ident.run(settings, cfgs, progress=False, seeds=2, workers=2)
    for key in ("mcc_seeds", "r2_seeds", "mig_seeds", "sap_seeds", "modularity_seeds", "explicitness_seeds",
                "used_features_mean"):
        assert serial["configs"][0][key] == parallel["configs"][0][key]
    assert serial["baselines"]["observations_x"]["mcc_seeds"] == parallel["baselines"]["observations_x"]["mcc_seeds"]


def test_identifiability_same_seed_same_numbers():
    settings = ident.Settings(steps=5, tasks_per_step=4, n_eval=300, n_eval_tasks=8, n_checkpoints=1)
    mixing = ident.make_world(settings)
    a = ident.train_config(ident.Config("group_lasso", 0.1, "blocks"), settings, mixing, progress=False)
    b = ident.train_config(ident.Config("group_lasso", 0.1, "blocks"), settings, ident.make_world(settings),
                           progress=False)
    for key in ("mcc", "r2", "used_features_mean", "train_loss_last50"):
        assert a[key] == b[key]


def test_block_r2_sees_identifiability_up_to_blocks():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 6))
    rot2 = np.array([[0.6, -0.8], [0.8, 0.6]])
    within = z.copy()
    within[:, 2:4] = z[:, 2:4] @ rot2.T                       # mix factors 2, 3 (one block)
    assert ident.block_r2(z, within, 2, 0) == pytest.approx(1.0, abs=1e-9)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert ident.block_r2(z, z @ q.T, 2, 0) < 0.9
    assert ident.match_factors(z, within).mcc < 0.95


def test_identifiability_classification_tasks_have_every_class_in_their_support():
    """A task whose support misses a class (the SVM heads refuse it) is drawn again with a
    generator of its own; the tasks drawn well keep their draw."""
    settings = ident.Settings(n_support=4, n_query=4)
    mixing = ident.make_world(settings)
    first = ident.sample_sparse_tasks(64, 8, n_factors=settings.n_factors, support_size=settings.support_size,
                                      n_outputs=settings.n_classes, mixing=mixing, noise_std=settings.noise_std,
                                      task="classification", seed=np.random.default_rng([settings.seed, 0, 5, 0]))
    tasks = ident.draw_tasks(settings, mixing, "random", "classification", 64, stream=0, step=5)
    full = [len(torch.unique(first.y[t, :4])) == settings.n_classes for t in range(64)]
    assert 0 < sum(full) < 64   # four support examples, three classes: some first draws miss a class
    for t in range(64):
        assert len(torch.unique(tasks.y[t, :4])) == settings.n_classes
        assert torch.equal(tasks.x[t], first.x[t]) == full[t]
        assert torch.equal(tasks.y[t], first.y[t]) or not full[t]
