"""metasparse: few-shot meta-learning with sparse, differentiable base learners.

The workflow in Python (``docs/api.md``; :mod:`metasparse.api`)::

    import metasparse

    run = metasparse.train(metasparse.TrainConfig(dataset="synthetic", out="runs/syn"))
    ev = metasparse.evaluate(metasparse.EvalConfig(checkpoint=run.run_dir))

Your own datasets, backbones and heads: :func:`register_dataset`, :func:`register_backbone`,
:func:`register_head` (:mod:`metasparse.registry`; docs/extending.md).

Bad input raises a :class:`metasparse.MetasparseError` (:mod:`metasparse.errors`). The
names below are loaded on first use, so ``import metasparse.heads`` stays light.
"""
__version__ = "0.1.0"

_API = ("train", "TrainConfig", "TrainResult", "evaluate", "EvalConfig", "EvaluationResult", "compare",
        "CompareConfig", "ComparisonResult", "EpisodeSpec", "prepare", "PrepareConfig", "demo", "DemoConfig",
        "load_model", "ModelSpec", "build_model", "import_checkpoint", "ImportConfig", "ImportResult")
_REGISTRY = ("register_dataset", "register_backbone", "register_head")
_ERRORS = ("MetasparseError", "ConfigError", "DataError", "DataNotFoundError", "CheckpointError",
           "CheckpointNotFoundError")

__all__ = ["__version__", *_API, *_REGISTRY, *_ERRORS]


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in _REGISTRY:
        from . import registry
        return getattr(registry, name)
    if name in _ERRORS:
        from . import errors
        return getattr(errors, name)
    raise AttributeError(f"module 'metasparse' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
