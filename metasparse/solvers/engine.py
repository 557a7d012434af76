r"""One run loop for the batched iterative solvers (in the spirit of jaxopt's
``init_state`` / ``update`` / ``run``).

A solver is an object with

* ``update(state) -> state``: one iteration for every episode of the batch;
* ``check(state, active) -> (state, objective, gap)``: a per-episode certificate at
  the current point (``gap >= 0``; ``inf`` when the point cannot be certified yet).  It
  may also refresh the state (rebuild a working set, try a Newton step), which is why
  it returns one; it must not move the point of an episode that is not ``active``.

:func:`run` calls ``check`` every ``check_every`` iterations and stops an episode when

    gap / max(|objective|, floor) <= tol                      (converged), or
    the best relative gap has not improved by 1% in ``patience`` checks  (stalled),

or when ``max_iter`` is reached.  Stopped episodes are *frozen*: :func:`merge` keeps
their state while the others advance, and their reported objective and gap are
those of the returned point.  Stalled and capped episodes come back with
``converged = False``: a solve never stops short silently.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["StoppingRule", "RunResult", "merge", "run"]


class StoppingRule:
    r"""Per-episode stopping of batched iterations (see the module docstring)."""

    def __init__(self, B: int, tol: float, patience: int, dtype, device, floor: float = 0.0):
        self.tol, self.patience, self.floor = tol, patience, floor
        self.active = torch.ones(B, dtype=torch.bool, device=device)
        self.best = torch.full((B,), torch.inf, dtype=dtype, device=device)
        self.since = torch.zeros(B, dtype=torch.int64, device=device)
        self.objective = self.gap = None

    def relative(self, objective: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        return gap / torch.clamp(objective.abs(), min=self.floor)

    def update(self, objective: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Record a check; returns the new ``active`` mask."""
        rel = self.relative(objective, gap)
        done = ~self.active
        improved = rel < 0.99 * self.best
        self.best = torch.where(improved, rel, self.best)
        self.since = torch.where(improved, torch.zeros_like(self.since), self.since + 1)
        self.active = self.active & ~(rel <= self.tol) & (self.since < self.patience)
        if self.objective is None:
            self.objective, self.gap = objective, gap
        else:
            self.objective = torch.where(done, self.objective, objective)
            self.gap = torch.where(done, self.gap, gap)
        return self.active


@dataclass
class RunResult:
    """What :func:`run` returns: the final ``state``; per episode (B,) ``n_iter``,
    ``objective``, ``gap``, ``rel_gap`` at the returned point and ``converged``
    (``rel_gap <= tol``)."""

    state: Any
    n_iter: torch.Tensor
    objective: torch.Tensor
    gap: torch.Tensor
    rel_gap: torch.Tensor
    converged: torch.Tensor


def merge(active: torch.Tensor, new, old):
    """Field-wise ``where(active, new, old)`` over a dataclass state: tensor fields with
    the batch as leading dimension and equal shapes are merged, other fields are taken
    from ``new`` (shared, episode-independent data)."""
    B = active.shape[0]
    out = {}
    for f in dataclasses.fields(new):
        a, b = getattr(new, f.name), getattr(old, f.name)
        if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dim() > 0 and a.shape[0] == B):
            out[f.name] = torch.where(active.reshape(B, *([1] * (a.dim() - 1))), a, b)
        else:
            out[f.name] = a
    return type(new)(**out)


def run(solver, state, *, tol: float, max_iter: int, check_every: int = 1, patience: int = 20,
        floor: float = 0.0) -> RunResult:
    """Iterate ``solver.update`` from ``state`` until every episode is converged, stalled
    or ``max_iter`` is reached (module docstring)."""
    rule = None
    n_iter = None
    all_active = True
    active = None
    for it in range(max_iter + 1):
        if it % check_every == 0 or it == max_iter:
            state, objective, gap = solver.check(state, active)
            if rule is None:
                B = objective.shape[0]
                rule = StoppingRule(B, tol, patience, objective.dtype, objective.device, floor)
                n_iter = torch.zeros(B, dtype=torch.int64, device=objective.device)
            active = rule.update(objective, gap)
            n_active = int(active.sum())
            all_active = n_active == active.shape[0]
            if it == max_iter or n_active == 0:
                break
        new = solver.update(state)
        state = new if all_active else merge(active, new, state)
        n_iter = n_iter + active.to(torch.int64)
    rel = rule.relative(rule.objective, rule.gap)
    return RunResult(state=state, n_iter=n_iter, objective=rule.objective, gap=rule.gap, rel_gap=rel,
                     converged=rel <= tol)
