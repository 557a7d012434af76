"""The Python API of the whole workflow (``docs/api.md``); the command line is a thin client.

Each step takes one typed configuration, validated when it is made (bad options raise
:class:`~metasparse.errors.ConfigError` at once), and returns a result object::

    from metasparse.api import (CompareConfig, EpisodeSpec, EvalConfig, TrainConfig,
                                compare, evaluate, train)

    run = train(TrainConfig(dataset="synthetic", out="runs/syn", epochs=2))
    ev = evaluate(EvalConfig(checkpoint=run.run_dir, episodes=EpisodeSpec(shots=[5])))
    ev.results[5]["accuracy"]
    cmp = compare(CompareConfig([run.run_dir], heads=["group-sparse-svm", "svm"], out="runs/cmp"))

* :func:`train` (:class:`TrainConfig` -> :class:`TrainResult`): a new or resumed run;
* :func:`evaluate` (:class:`EvalConfig` -> :class:`EvaluationResult`): meta-test a checkpoint;
* :func:`compare` (:class:`CompareConfig` -> :class:`ComparisonResult`): checkpoints and
  heads on identical episodes (:class:`EpisodeSpec` says which, for both);
* :func:`prepare` (:class:`PrepareConfig`): build CIFAR-FS / FC100 from CIFAR-100;
* :func:`demo` (:class:`DemoConfig`): the group-sparse vs vanilla SVM demo;
* :func:`import_checkpoint` (:class:`ImportConfig` -> :class:`ImportResult`): a MetaOptNet /
  learn2learn ResNet-12 as a metasparse checkpoint;
* :func:`load_model`: a checkpoint's :class:`~metasparse.engine.model.FewShotModel`;
  :class:`ModelSpec` / :func:`build_model`: a model from a run configuration.
"""
import importlib

# name -> module of this package; loaded on first use, so that `metasparse prepare` (numpy and
# pickle work) does not import torch through the modules of training
_EXPORTS = {
    "CompareConfig": "comparison", "ComparisonResult": "comparison", "compare": "comparison",
    "DemoConfig": "demonstration", "demo": "demonstration", "EpisodeSpec": "episode_sets",
    "EvalConfig": "evaluation", "EvaluationResult": "evaluation", "evaluate": "evaluation",
    "ImportConfig": "importing", "ImportResult": "importing", "import_checkpoint": "importing",
    "ModelSpec": "model", "build_model": "model", "load_model": "model",
    "PrepareConfig": "preparation", "prepare": "preparation", "TrainConfig": "train_config",
    "TrainResult": "training", "train": "training",
}

__all__ = ["train", "TrainConfig", "TrainResult", "evaluate", "EvalConfig", "EvaluationResult", "compare",
           "CompareConfig", "ComparisonResult", "EpisodeSpec", "prepare", "PrepareConfig", "demo", "DemoConfig",
           "load_model", "ModelSpec", "build_model", "import_checkpoint", "ImportConfig", "ImportResult"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
