"""Differentiable few-shot heads (support features -> classifier -> query logits).

Build one by name with :func:`metasparse.registry.build_head`."""
from .base import Head, HeadFit, HeadOutput, NonFiniteFeaturesError, SolverConvergenceError, SolverConvergenceWarning
from .group_sparse_svm import GroupSparseSVMHead, SVMHead
from .protonet import ProtoNetHead
from .ridge import RidgeHead

__all__ = ["Head", "HeadFit", "HeadOutput", "GroupSparseSVMHead", "SVMHead", "RidgeHead",
           "ProtoNetHead", "SolverConvergenceWarning", "SolverConvergenceError", "NonFiniteFeaturesError"]
