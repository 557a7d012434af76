"""Differentiable few-shot heads (support features -> classifier -> query logits)."""
from .base import Head, HeadFit, HeadOutput, SolverConvergenceError, SolverConvergenceWarning
from .group_sparse_svm import GroupSparseSVMHead, SVMHead
from .protonet import ProtoNetHead
from .ridge import RidgeHead

__all__ = ["Head", "HeadFit", "HeadOutput", "GroupSparseSVMHead", "SVMHead", "RidgeHead",
           "ProtoNetHead", "build_head", "HEADS", "SolverConvergenceWarning", "SolverConvergenceError"]

HEADS = {
    "group_sparse_svm": GroupSparseSVMHead,
    "svm": SVMHead,
    "ridge": RidgeHead,
    "protonet": ProtoNetHead,
}
_ALIASES = {"gs_svm": "group_sparse_svm", "svm_cs": "svm", "metaoptnet_svm": "svm", "r2d2": "ridge",
            "rr": "ridge", "metaoptnet_rr": "ridge", "proto": "protonet"}


def build_head(name: str, **kw) -> Head:
    """Build a head by name: one of ``group_sparse_svm``, ``svm``, ``ridge``, ``protonet``
    (dashes or underscores; aliases gs-svm, svm-cs, r2d2, rr, proto); keyword arguments
    go to its constructor."""
    key = str(name).lower().strip().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in HEADS:
        raise ValueError(f"head: unknown name {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[key](**kw)
