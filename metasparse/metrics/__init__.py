"""Metrics: disentanglement of learned representations (MCC, linear R^2, DCI; MIG, SAP,
modularity, explicitness).

Accuracy / confidence-interval helpers (MetaOptNet's 1.96 interval, paired tests, the
Student-t interval of a mean over seeds, ``mean_t_ci``) live in their own submodule,
``metasparse.metrics.accuracy`` (it imports torch); import them from there.
"""
from .disentanglement import (DCIResult, MCCResult, correlation_matrix, dci, disentanglement_report,
                              importance_matrix, linear_r2, match_factors, mean_corr_coef)
from .information import (ExplicitnessResult, MIGResult, ModularityResult, SAPResult, discretize,
                          discretize_factors, explicitness, information_report, mig, modularity,
                          mutual_information_matrix, sap)

__all__ = ["DCIResult", "MCCResult", "correlation_matrix", "dci", "disentanglement_report",
           "importance_matrix", "linear_r2", "match_factors", "mean_corr_coef",
           "ExplicitnessResult", "MIGResult", "ModularityResult", "SAPResult", "discretize", "discretize_factors",
           "explicitness", "information_report", "mig", "modularity", "mutual_information_matrix", "sap"]
