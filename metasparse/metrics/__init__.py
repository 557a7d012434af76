"""Metrics: disentanglement of learned representations (MCC, linear R^2, DCI).

Accuracy / confidence-interval helpers live in their own submodule of this package
(``metasparse.metrics.<module>``); import them from there.
"""
from .disentanglement import (DCIResult, MCCResult, correlation_matrix, dci, disentanglement_report,
                              importance_matrix, linear_r2, match_factors, mean_corr_coef)

__all__ = ["DCIResult", "MCCResult", "correlation_matrix", "dci", "disentanglement_report",
           "importance_matrix", "linear_r2", "match_factors", "mean_corr_coef"]
