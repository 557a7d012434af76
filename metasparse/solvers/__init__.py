"""Solvers for the group-sparse multiclass SVM (they know nothing about heads)."""
from .simplex import project_simplex, project_l1_ball
from .objectives import (
    primal_objective, dual_objective, weights_from_dual, group_soft_threshold, one_hot,
)
from .fista import lipschitz_constant
from .svm_dual import DualSolution, GroupSparseSVMDual
from .implicit import implicit_dual_vjp, ImplicitDual, dual_hessian
from .lambda_max import lambda_max

__all__ = [
    "project_simplex", "project_l1_ball", "primal_objective", "dual_objective",
    "weights_from_dual", "group_soft_threshold", "one_hot", "DualSolution",
    "GroupSparseSVMDual", "lipschitz_constant", "implicit_dual_vjp", "ImplicitDual",
    "dual_hessian", "lambda_max",
]
