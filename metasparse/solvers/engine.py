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
    r"""Per-episode stopping of batched iterations (see the module docstring).  The
    per-episode state is created at the first check."""

    def __init__(self, tol: float, patience: int, floor: float = 0.0):
        self.tol, self.patience, self.floor = tol, patience, floor
        self.active = self.best = self.since = None
        self.objective = self.gap = None

    def relative(self, objective: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        return gap / torch.clamp(objective.abs(), min=self.floor)

    def _step(self, objective: torch.Tensor, gap: torch.Tensor):
        rel = self.relative(objective, gap)
        if self.active is None:
            active, best, since = torch.ones_like(rel, dtype=torch.bool), torch.full_like(rel, torch.inf), \
                torch.zeros_like(rel, dtype=torch.int64)
        else:
            active, best, since = self.active, self.best, self.since
        improved = rel < 0.99 * best
        best = torch.where(improved, rel, best)
        since = torch.where(improved, 0, since + 1)
        return active & ~(rel <= self.tol) & (since < self.patience), best, since

    def preview(self, objective: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """The ``active`` mask :meth:`update` would return for this check (nothing recorded)."""
        return self._step(objective, gap)[0]

    def update(self, objective: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Record a check; returns the new ``active`` mask."""
        done = None if self.active is None else ~self.active
        self.active, self.best, self.since = self._step(objective, gap)
        if done is None:
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
    or ``max_iter`` is reached (module docstring).

    The number of running episodes is the loop's one host read per check.  A solver whose
    ``check`` reads the device anyway can take it along: with ``previews_stopping = True``
    its ``check(state, active, preview)`` gets ``preview(objective, gap)``, the device
    mask of the episodes still running after this check, and may return the count it
    read as a fourth value (the same transfer)."""
    rule = StoppingRule(tol, patience, floor)
    n_iter = None
    all_active = True
    active = None
    previews = getattr(solver, "previews_stopping", False)
    for it in range(max_iter + 1):
        if it % check_every == 0 or it == max_iter:
            out = solver.check(state, active, rule.preview) if previews else solver.check(state, active)
            state, objective, gap = out[:3]
            n_active = out[3] if len(out) > 3 else None
            if n_iter is None:
                n_iter = torch.zeros(objective.shape[0], dtype=torch.int64, device=objective.device)
            active = rule.update(objective, gap)
            if n_active is None:
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
