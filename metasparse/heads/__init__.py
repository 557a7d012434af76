"""Differentiable few-shot heads (support features -> classifier -> query logits)."""
from .base import Head, HeadFit, HeadOutput
from .group_sparse_svm import GroupSparseSVMHead, SVMHead
from .protonet import ProtoNetHead
from .ridge import RidgeHead

__all__ = ["Head", "HeadFit", "HeadOutput", "GroupSparseSVMHead", "SVMHead", "RidgeHead",
           "ProtoNetHead", "build_head", "HEADS"]

HEADS = {
    "group_sparse_svm": GroupSparseSVMHead,
    "svm": SVMHead,
    "ridge": RidgeHead,
    "protonet": ProtoNetHead,
}
_ALIASES = {"gs-svm": "group_sparse_svm", "group-sparse-svm": "group_sparse_svm",
            "svm-cs": "svm", "metaoptnet-svm": "svm", "r2d2": "ridge", "metaoptnet-rr": "ridge",
            "proto": "protonet"}


def build_head(name: str, **kw) -> Head:
    """Build a head by name: one of ``group_sparse_svm``, ``svm``, ``ridge``, ``protonet``
    (aliases: gs-svm, svm-cs, r2d2, proto); keyword arguments go to its constructor."""
    key = _ALIASES.get(name.lower().replace(" ", "_"), name.lower().replace(" ", "_"))
    if key not in HEADS:
        raise ValueError(f"head: unknown name {name!r}; expected one of {sorted(HEADS)}")
    return HEADS[key](**kw)
