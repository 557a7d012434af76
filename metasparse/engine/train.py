"""Meta-training loop (MetaOptNet protocol) with exact resume and optional DDP.

One step on a batch of ``B`` episodes (support S_b, query Q_b, ``N`` ways):

    logits_b = head(f(Q_b), f(S_b), y_S_b)             (the head solves its inner problem)
    loss = mean_{b, q} -sum_c ybar_{b,q,c} log softmax(logits_b[q])_c
    ybar = (1 - eps) onehot + eps / (N - 1) (1 - onehot)     (MetaOptNet's label smoothing)

followed by an SGD step on the backbone and the head's parameters (logit scale).

Reproducibility: the randomness of step ``(epoch, i)`` (augmentation, dropout,
DropBlock) is seeded from ``(seed, epoch, i)`` and the episodes are a pure function of
the same triple, so a run killed at any point and resumed from ``last.pt`` (weights,
optimizer, progress, RNG states, the epoch's running statistics) ends with the same
weights and writes the same ``metrics.jsonl`` as an uninterrupted run.

Inner-solver convergence: when the head reports ``fit.converged`` (the SVM heads), every
step record carries ``max_rel_gap`` (worst relative duality gap of the batch, all ranks)
and ``unconverged_fraction``, every epoch record ``train_max_rel_gap`` and
``train_unconverged_fraction``; an epoch in which some episode missed the tolerance ends
with one :class:`~metasparse.heads.SolverConvergenceWarning`, or, with
``settings.strict_solver``, the step raises :class:`~metasparse.heads.SolverConvergenceError`
(before any checkpoint holding its update is written, so ``last.pt`` stays the last good
checkpoint). Heads that report nothing (ridge, ProtoNet) get none of these keys.

Host syncs: a step reads its statistics on the host once. Loss, accuracy, unused
fraction (means over ranks), worst relative gap (max over ranks), episodes, unconverged
episodes and non-finite losses (sums over ranks) are packed into one float64 tensor on the
device (:func:`_pack_step`); on CUDA it is copied to pinned memory behind an event, and
read **one step late**: step ``i``'s numbers are read after step ``i + 1``'s work has been
queued, so the host never waits for the GPU in the middle of the pipeline. What the
numbers decide happens when they are read: a non-finite loss (``ConfigError``: the
training diverged) or, with ``strict_solver``, an unconverged solve of step ``i`` raises
once step ``i + 1`` is queued, or earlier if step ``i + 1`` fails (its failure is then
reported as step ``i``'s), and in any case before a checkpoint, a step record, the end of
the epoch or a ``stop_after_steps`` stop: every step is read before anything is written
after it, so ``last.pt`` and ``metrics.jsonl`` never hold a bad step (the weights in
memory may have taken one more update, they are never saved). Step records, epoch
records and checkpoints hold the same numbers as an undeferred loop.

Data wait: the wall-clock time spent in ``next(stream)`` over the whole step time
(``time.perf_counter``) is ``data_wait_fraction`` in step records (over the steps since the
previous step record), epoch records and the progress bar (over the epoch so far). On
CUDA kernels run asynchronously, so only such fractions over many steps are meaningful:
a fraction near 1 means the GPU waits for episodes (more ``--num-workers``), near 0 that
the data keep up.

CUDA fast path: ``torch.backends.cudnn.benchmark`` is on while :func:`train` runs, a
convolutional backbone runs in the channels-last layout (``channels_last``, default: on
CUDA) and ``compile_backbone`` runs it through ``torch.compile``
(:meth:`~metasparse.engine.model.FewShotModel.compile_backbone`).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from episodes.atomic import atomic_write_bytes
from episodes.sampler import batch_seed

from ..errors import CheckpointError, ConfigError, DataError
from ..heads.base import (NonFiniteFeaturesError, SolverConvergenceError, SolverConvergenceWarning,
                          unconverged_message)
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainSettings, lr_factor
from .distributed import DistContext, all_reduce_max, all_reduce_mean, all_reduce_sum, barrier, shard_bounds
from .evaluate import evaluate_episodes

__all__ = ["EpisodeStream", "train", "smoothed_cross_entropy", "step_seed", "read_jsonl"]


class EpisodeStream(Protocol):
    """Training batches: ``iter_epoch(epoch, start)`` yields batches ``start, start+1, ...``
    of ``epoch`` (full, un-sharded EpisodeBatch objects, raw images)."""

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


def step_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the global torch RNG for training step ``index`` of ``epoch`` (dropout,
    DropBlock): a pure function of ``(seed, epoch, index)``, by the same SplitMix64
    derivation as the episodes (:func:`episodes.sampler.batch_seed`) applied to a seed of
    its own (``batch_seed(seed, -2, 0)``), so the step's random numbers never repeat the
    sampler's stream for the same batch."""
    return batch_seed(batch_seed(seed, -2, 0), epoch, index)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over queries of the cross-entropy against MetaOptNet's smoothed one-hot targets
    ``(1 - eps)`` on the label and ``eps / (N - 1)`` on each other class."""
    n_way = logits.shape[-1]
    logp = F.log_softmax(logits.reshape(-1, n_way).float(), dim=-1)
    # the one-hot targets by a scatter: F.one_hot reads min / max of the labels on the host
    y = torch.zeros_like(logp).scatter_(-1, labels.reshape(-1, 1), 1.0)
    if eps > 0:
        y = y * (1 - eps) + (1 - y) * (eps / (n_way - 1))
    return -(y * logp).sum(-1).mean()


def read_jsonl(path) -> list:
    """The records of a JSONL file; lines that do not parse (a torn last line of a killed
    run, or damage) are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return out


def _lines_to_keep(path: Path, keep_until: int) -> bytes:
    """``metrics.jsonl`` as a resume from ``global_step = keep_until`` keeps it: every line as
    it is (byte for byte), less the records written after the checkpoint and a last line
    that does not parse (torn by the kill).  A line that does not parse elsewhere is not
    ours to judge: it is kept."""
    if not path.exists():
        return b""
    lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i < len(lines) - 1:
                kept.append(line)
            continue
        if isinstance(record, dict) and isinstance(record.get("global_step"), int) \
                and record["global_step"] > keep_until:
            continue
        kept.append(line)
    return b"".join(line + b"\n" for line in kept)


class _MetricsLog:
    """Append-only JSONL log; on resume, the records written after the checkpoint are
    dropped (nothing else: see :func:`_lines_to_keep`)."""

    def __init__(self, path: Path, enabled: bool, keep_until: Optional[int]):
        self.path = path
        self.enabled = enabled
        if enabled:
            atomic_write_bytes(path, _lines_to_keep(path, keep_until) if keep_until is not None else b"")

    def write(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# running statistics of an epoch (checkpointed as ``progress["epoch_sums"]``): sums of the
# batch-mean loss, accuracy and unused fraction, the number of batches, then the number of
# episodes whose head reported convergence, how many of them missed the tolerance, and
# the worst relative gap among them
_LOSS, _ACC, _UNUSED, _BATCHES, _EPISODES, _UNCONVERGED, _MAX_GAP = range(7)


def _fresh_sums() -> torch.Tensor:
    sums = torch.zeros(7, dtype=torch.float64)
    sums[_MAX_GAP] = -math.inf
    return sums


def _restore_sums(saved) -> torch.Tensor:
    """``epoch_sums`` of a checkpoint; an older 4-entry list (no solver statistics) keeps
    the fresh solver entries, which then cover the steps after the resume only."""
    sums = _fresh_sums()
    saved = torch.tensor(saved, dtype=torch.float64)
    sums[:saved.numel()] = saved
    return sums


# one step's statistics, packed on the device (:func:`_pack_step`) and read on the host in
# one transfer: the loss, accuracy and unused fraction of the batch (means over ranks), the
# worst relative gap (max over ranks; -inf without convergence reports), the number of
# episodes with a convergence report, how many of them missed the tolerance, and the
# number of ranks whose loss is not finite (sums over ranks)
_S_LOSS, _S_ACC, _S_UNUSED, _S_GAP, _S_EPISODES, _S_UNCONVERGED, _S_NONFINITE = range(7)


def _pack_step(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, fit,
               ctx: DistContext) -> torch.Tensor:
    """The step's statistics (the ``_S_*`` entries) as one float64 tensor on the device of
    ``loss``, reduced over ranks; no host sync (three all-reduces under DDP)."""
    with torch.no_grad():
        dev = loss.device
        f64 = dict(dtype=torch.float64, device=dev)
        loss = loss.detach()
        acc = (logits.argmax(-1) == labels).double().mean()
        unused = fit.unused_fraction.double().mean() if getattr(fit, "unused_fraction", None) is not None \
            else torch.zeros((), **f64)
        means = all_reduce_mean(torch.stack([loss.double(), acc, unused]), ctx)
        nonfinite = (~torch.isfinite(loss)).double()
        converged = getattr(fit, "converged", None)
        if converged is None:
            worst = torch.full((1,), -math.inf, **f64)
            counts = torch.stack([torch.zeros((), **f64), torch.zeros((), **f64), nonfinite])
        else:
            gap = fit.rel_gap.detach().double()
            worst = gap.max().reshape(1) if gap.numel() else torch.full((1,), -math.inf, **f64)
            worst = all_reduce_max(worst, ctx)
            counts = torch.stack([torch.full((), float(converged.numel()), **f64),
                                  (~converged).sum().double(), nonfinite])
        counts = all_reduce_sum(counts, ctx)
        return torch.cat([means, worst, counts])


class _StepStats:
    """The packed statistics of step ``(epoch, i)`` on their way to the host: on CUDA a
    non-blocking copy into pinned memory behind an event, so that :meth:`read` waits for
    this step only, not for the work queued after it."""

    def __init__(self, packed: torch.Tensor, reports: bool, epoch: int, i: int, global_step: int, lr: float,
                 tol: Optional[float]):
        self.reports, self.epoch, self.i, self.global_step, self.lr, self.tol = reports, epoch, i, global_step, lr, tol
        self.event = None
        if packed.device.type == "cuda":
            self.host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self.host.copy_(packed, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:   # CPU: already there (other devices: one blocking copy)
            self.host = packed.to("cpu")

    def read(self):
        """``(values as a CPU float64 tensor, the same as Python floats)``: the step's one
        device -> host transfer."""
        if self.event is not None:
            self.event.synchronize()
        return self.host, self.host.tolist()


def _add_step(sums: torch.Tensor, stats: torch.Tensor, conv: Optional[torch.Tensor]) -> None:
    """Add one step's (loss, accuracy, unused) means and solver statistics to ``sums``."""
    sums[_LOSS:_BATCHES] += stats
    sums[_BATCHES] += 1
    if conv is not None:
        sums[_EPISODES] += conv[1]
        sums[_UNCONVERGED] += conv[2]
        sums[_MAX_GAP] = torch.maximum(sums[_MAX_GAP], conv[0])


def _step_convergence_keys(values: List[float], reports: bool) -> Dict[str, float]:
    if not reports:
        return {}
    return {"max_rel_gap": values[_S_GAP],
            "unconverged_fraction": values[_S_UNCONVERGED] / max(values[_S_EPISODES], 1.0)}


def _epoch_convergence_keys(sums: torch.Tensor) -> Dict[str, float]:
    if sums[_EPISODES] == 0:
        return {}
    return {"train_max_rel_gap": float(sums[_MAX_GAP]),
            "train_unconverged_fraction": float(sums[_UNCONVERGED] / sums[_EPISODES])}


def _strict_error(conv: torch.Tensor, tol: Optional[float], epoch: int, i: int,
                  s: TrainSettings) -> SolverConvergenceError:
    """The error of ``strict_solver`` for step ``(epoch, i)``, whose solve missed the tolerance."""
    return SolverConvergenceError(
        f"epoch {epoch + 1}/{s.epochs}, batch {i + 1}/{s.batches_per_epoch}: "
        + unconverged_message(int(conv[2]), int(conv[1]), float(conv[0]), tol)
        + " (strict_solver: stopped before this step was saved)")


def _warn_unconverged(sums: torch.Tensor, tol: Optional[float], epoch: int, s: TrainSettings) -> None:
    """One warning for the epoch when some of its episodes missed the tolerance."""
    if sums[_UNCONVERGED] > 0:
        warnings.warn(SolverConvergenceWarning(
            f"epoch {epoch + 1}/{s.epochs}: " + unconverged_message(
                int(sums[_UNCONVERGED]), int(sums[_EPISODES]), float(sums[_MAX_GAP]), tol)), stacklevel=2)


def _diverged(epoch: int, i: int, s: TrainSettings, what: str) -> ConfigError:
    """The error of a step whose loss or weights became non-finite: with finite data (checked
    when loaded) and a finite --lr (checked before the run starts), the training diverged."""
    return ConfigError(f"epoch {epoch + 1}, batch {i + 1}: {what}; the training diverged with --lr {s.lr} "
                       f"(the data are finite); start a new run with a lower --lr")


class _DataWaitClock:
    """Wall-clock seconds spent waiting for batches (``next(stream)``) against all seconds,
    over the epoch so far and over the window since the previous step record."""

    def __init__(self) -> None:
        self.epoch_start = self.window_start = time.perf_counter()
        self.epoch_wait = self.window_wait = 0.0

    def waited(self, seconds: float) -> None:
        self.epoch_wait += seconds
        self.window_wait += seconds

    def epoch_fraction(self) -> float:
        total = time.perf_counter() - self.epoch_start
        return min(self.epoch_wait / total, 1.0) if total > 0 else 0.0

    def window_fraction(self) -> float:
        """The window's fraction; starts the next window."""
        now = time.perf_counter()
        total, wait = now - self.window_start, self.window_wait
        self.window_start, self.window_wait = now, 0.0
        return min(wait / total, 1.0) if total > 0 else 0.0


def _match_state_layout(opt: torch.optim.Optimizer) -> None:
    """Give the optimizer's per-parameter buffers (momentum, Adam moments) the memory layout
    of their parameter (a checkpoint's buffers are contiguous; channels-last weights are not)."""
    for group in opt.param_groups:
        for param in group["params"]:
            state = opt.state.get(param, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() == 4
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0,
                               weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {s.optimizer!r}")


@contextmanager
def _cudnn_benchmark(device: torch.device):
    """``torch.backends.cudnn.benchmark`` on while training on CUDA (each conv shape picks its
    fastest kernel once: a few shapes here, support / query / validation), then restored."""
    saved = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def train(model: nn.Module, train_stream: EpisodeStream, val_episodes: Optional[Iterable], settings: TrainSettings,
          run_dir, *, spec: Dict[str, Any], device: torch.device, resume: bool = False,
          ctx: Optional[DistContext] = None, progress: bool = True, stop_after_steps: Optional[int] = None,
          tensorboard: bool = False, val_total: Optional[int] = None, sync_bn: bool = False,
          channels_last: Optional[bool] = None, compile_backbone: bool = False) -> Dict[str, Any]:
    """Meta-train ``model`` (a FewShotModel) and write ``run_dir/{last,best}.pt`` and
    ``run_dir/metrics.jsonl``. ``spec`` goes into every checkpoint as given; it must hold
    ``config``, the run configuration the model is rebuilt from
    (:func:`metasparse.api.load_model`). The batches of ``train_stream`` and
    ``val_episodes`` (``val_total`` of them, for the progress bar) reach the model as they
    are (augmented and normalised by the sampler).

    ``resume`` continues from ``run_dir/last.pt``; ``ctx`` is the process group of a
    torchrun launch (``sync_bn``: batch-norm statistics over its ranks); ``tensorboard``
    also logs to ``run_dir/tensorboard``. ``channels_last`` (None: on CUDA) runs a
    convolutional backbone in the channels-last layout; ``compile_backbone`` runs it
    through ``torch.compile`` (both: see :class:`~metasparse.engine.model.FewShotModel`;
    checkpoints are unaffected). On CUDA, ``torch.backends.cudnn.benchmark`` is on for the
    call.

    ``stop_after_steps`` stops (as if killed) after that many optimisation steps in this
    call, right after the checkpoint due at that point (tests use it).

    Returns ``{"stopped", "global_step"}`` and, for a finished run, ``"best"``,
    ``"last_val"`` and ``"elapsed_s"``."""
    with _cudnn_benchmark(device):
        run = _Run(model, settings, Path(run_dir), spec, device, ctx or DistContext(device=device), progress,
                   device.type == "cuda" if channels_last is None else channels_last)
        if resume:
            run.restore()
        run.wrap_model(sync_bn, compile_backbone)
        if not resume:   # step 0: a new run is resumable from its first moment
            run.checkpoint("last.pt", 0, 0)
        run.open_logs(resume, tensorboard)
        try:
            return run.fit(train_stream, val_episodes, val_total, stop_after_steps)
        finally:
            if run.writer:
                run.writer.close()


class _Run:
    """The state of one :func:`train` call: the model and its optimiser, where the run
    stands (epoch, step, best checkpoint), the current epoch's statistics and the logs."""

    def __init__(self, model: nn.Module, settings: TrainSettings, run_dir: Path, spec: Dict[str, Any],
                 device: torch.device, ctx: DistContext, progress: bool, channels_last: bool):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.model, self.s, self.run_dir, self.spec, self.device, self.ctx = model, settings, run_dir, spec, device, ctx
        self.progress = progress
        model.to(device)
        if channels_last:   # before the optimizer state exists: its buffers follow the weights' layout
            model.use_channels_last()
        self.opt = _make_optimizer(model.parameters(), settings)
        self.train_model: nn.Module = model
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.best: Optional[Dict[str, Any]] = None
        self.last_val: Optional[Dict[str, Any]] = None
        self.resumed_sums = _fresh_sums()
        self.sums = _fresh_sums()   # the current epoch's running statistics (checkpointed mid-epoch)
        self.writer = None
        self.steps_this_call = 0
        self.t0 = time.time()

    # ------------------------------------------------------------------ set-up
    def restore(self) -> None:
        """Weights, optimiser, progress, best checkpoint, RNG states and the epoch's running
        statistics from ``last.pt``."""
        last = self.run_dir / "last.pt"
        ck = load_checkpoint(last, map_location=self.device)
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            _match_state_layout(self.opt)
            p = ck["progress"]
            self.start_epoch, self.start_step, self.global_step = int(p["epoch"]), int(p["step"]), int(p["global_step"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise CheckpointError(f"{last}: does not fit the run's config.json (other weight "
                                  f"shapes, or a damaged checkpoint): {' '.join(lines[:3])[:300]}") from None
        self.best = ck.get("best")
        restore_rng(ck.get("rng"))
        self.resumed_sums = _restore_sums(p.get("epoch_sums", [0.0] * 4))

    def wrap_model(self, sync_bn: bool, compile_backbone: bool) -> None:
        """SyncBatchNorm, ``torch.compile`` and DDP, as asked (the checkpoints hold the plain model)."""
        ctx, model = self.ctx, self.model
        if ctx.enabled and sync_bn:   # batch-norm statistics over all ranks (CUDA only in PyTorch)
            if self.device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA devices (torch.nn.SyncBatchNorm)")
            model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
        if compile_backbone:   # after any module swap (sync-bn): the compiled module wraps the final backbone
            model.compile_backbone()
        if ctx.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def open_logs(self, resume: bool, tensorboard: bool) -> None:
        """``metrics.jsonl`` (cut back to the resumed step) and the optional TensorBoard writer."""
        self.log = _MetricsLog(self.run_dir / "metrics.jsonl", self.ctx.is_main, self.global_step if resume else None)
        if tensorboard and self.ctx.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - optional dependency
                raise ConfigError("--tensorboard needs the tensorboard package "
                                  "(pip install metasparse[tensorboard])") from e
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def checkpoint(self, name: str, epoch: int, step: int) -> None:
        """Save ``name`` (main process): the run stands at batch ``step`` of ``epoch``."""
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir / name, {
            **self.spec, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "progress": {"epoch": epoch, "step": step, "global_step": self.global_step,
                         "epoch_sums": (self.sums if step else _fresh_sums()).tolist()},
            "best": self.best, "rng": capture_rng()})

    # ------------------------------------------------------------------ the loop
    def fit(self, train_stream: EpisodeStream, val_episodes: Optional[Iterable], val_total: Optional[int],
            stop_after_steps: Optional[int]) -> Dict[str, Any]:
        """The remaining epochs: train, validate, record, checkpoint."""
        self.t0 = time.time()   # elapsed_s counts the epochs of this call, not its set-up
        for epoch in range(self.start_epoch, self.s.epochs):
            lr = self.s.lr * lr_factor(epoch, self.s)
            for g in self.opt.param_groups:
                g["lr"] = lr
            first = self.start_step if epoch == self.start_epoch else 0
            if self.train_epoch(train_stream, epoch, first, lr, stop_after_steps):
                barrier(self.ctx)
                return {"stopped": True, "global_step": self.global_step}
            self.end_epoch(epoch, lr, val_episodes, val_total)
        return {"stopped": False, "global_step": self.global_step, "best": self.best, "last_val": self.last_val,
                "elapsed_s": time.time() - self.t0}

    def train_epoch(self, train_stream: EpisodeStream, epoch: int, first: int, lr: float,
                    stop_after_steps: Optional[int]) -> bool:
        """Batches ``first..`` of ``epoch``; True when ``stop_after_steps`` stopped the call.

        Each step's statistics are read one step late (:meth:`finish`), and always before
        anything is written after the step (module docstring)."""
        s = self.s
        self.model.train()
        self.sums = self.resumed_sums.clone() if (epoch == self.start_epoch and first) else _fresh_sums()
        self.tol = None   # the solver tolerance the head's fits report
        self.bar = tqdm(total=s.batches_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{s.epochs}", unit="batch",
                        disable=None if (self.progress and self.ctx.is_main) else True, dynamic_ncols=True,
                        leave=False)
        self.clock = _DataWaitClock()
        pending: Optional[_StepStats] = None   # the step whose statistics are not read yet
        stream = train_stream.iter_epoch(epoch, first)
        for i in range(first, s.batches_per_epoch):
            packed = fit = None
            try:
                t_wait = time.perf_counter()
                batch = next(stream)
                self.clock.waited(time.perf_counter() - t_wait)
                loss, packed, fit = self.forward(batch, epoch, i)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            except Exception:
                if pending is not None:   # a bad previous step explains (and outranks) this failure
                    previous, pending = pending, None
                    self.finish(previous)
                if packed is not None:    # so does this step's own loss or solve (e.g. a failed backward)
                    self.finish(_StepStats(packed, getattr(fit, "converged", None) is not None, epoch, i,
                                           self.global_step + 1, lr, getattr(fit, "tol", None)), record=False)
                raise
            self.global_step += 1
            self.steps_this_call += 1
            current = _StepStats(packed, getattr(fit, "converged", None) is not None, epoch, i, self.global_step,
                                 lr, getattr(fit, "tol", None))
            if pending is not None:   # the previous step, now that this one is queued
                self.finish(pending)
            pending = current
            save = bool(s.checkpoint_every) and (i + 1) % s.checkpoint_every == 0 and i + 1 < s.batches_per_epoch
            stop = stop_after_steps is not None and self.steps_this_call >= stop_after_steps
            if save or stop:   # read before anything is written after this step
                pending = None
                self.finish(current)
            if save:
                self.checkpoint("last.pt", epoch, i + 1)
            if stop:
                self.bar.close()
                if i + 1 < s.batches_per_epoch:
                    self.checkpoint("last.pt", epoch, i + 1)
                return True
        if pending is not None:   # the epoch's last step
            self.finish(pending)
        return False

    def forward(self, batch, epoch: int, i: int):
        """The loss of step ``(epoch, i)`` on ``batch`` (this rank's share of its episodes),
        the step's packed statistics (on the device, not read) and the head's fit report."""
        s, ctx = self.s, self.ctx
        torch.manual_seed(step_seed(s.seed, epoch, i))
        batch = batch.to(self.device, non_blocking=True)
        lo, hi = shard_bounds(batch.n_episodes, ctx.rank, ctx.world_size)
        local = batch[lo:hi]
        try:
            logits, fit = self.train_model(local.support, local.support_labels, local.query, batch.n_way)
        except NonFiniteFeaturesError as e:
            if self.global_step == 0:   # before any update: the data are finite but too large
                raise DataError(f"epoch {epoch + 1}, batch {i + 1}: the first batch's features are too "
                                f"large for the head ({str(e).splitlines()[0][:160]}); normalise the "
                                f"data") from None
            # finite data (checked when loaded): the weights diverged
            raise _diverged(epoch, i, s, "the features are not finite") from None
        except torch.linalg.LinAlgError as e:   # after updates: features too large for the head's solve
            first_line = str(e).strip().splitlines()[0][:120]
            if self.global_step == 0:   # before any update: the data, not the training
                raise DataError(f"epoch {epoch + 1}, batch {i + 1}: the head's linear algebra failed on "
                                f"the first batch's features ({first_line}); the examples are probably of a "
                                f"huge magnitude: normalise the data") from None
            raise _diverged(epoch, i, s, f"the head's linear algebra failed on the features ({first_line})"
                            ) from None
        loss = smoothed_cross_entropy(logits, local.query_labels, s.label_smoothing)
        return loss, _pack_step(loss, logits, local.query_labels, fit, ctx), fit

    def finish(self, step: _StepStats, record: bool = True) -> None:
        """Read a step's statistics (its one host sync) and act on them: raise for a
        non-finite loss or (strict_solver) an unconverged solve, else (``record``) add
        them to the epoch's sums, the progress bar and the step record."""
        s = self.s
        values_t, values = step.read()
        conv = values_t[_S_GAP:_S_NONFINITE] if step.reports else None   # [worst gap, episodes, unconverged]
        self.tol = step.tol
        if s.strict_solver and conv is not None and values[_S_UNCONVERGED] > 0:
            self.bar.close()
            raise _strict_error(conv, self.tol, step.epoch, step.i, s)
        if values[_S_NONFINITE] > 0:
            self.bar.close()
            raise _diverged(step.epoch, step.i, s, "the loss is not finite")
        if not record:
            return
        _add_step(self.sums, values_t[_S_LOSS:_S_GAP], conv)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{values[_S_LOSS]:.3f}", acc=f"{100 * values[_S_ACC]:.1f}%",
                             used=f"{100 * (1 - values[_S_UNUSED]):.1f}%",
                             wait=f"{100 * self.clock.epoch_fraction():.0f}%", refresh=False)
        if s.log_every and (step.i + 1) % s.log_every == 0:
            step_record = {"kind": "step", "epoch": step.epoch + 1, "batch": step.i + 1,
                           "global_step": step.global_step, "lr": step.lr, "loss": values[_S_LOSS],
                           "accuracy": values[_S_ACC], "unused_fraction": values[_S_UNUSED],
                           **_step_convergence_keys(values, step.reports),
                           "data_wait_fraction": round(self.clock.window_fraction(), 4)}
            self.log.write(step_record)
            if self.writer:
                for key in ("loss", "accuracy", "unused_fraction", "max_rel_gap", "unconverged_fraction",
                            "data_wait_fraction"):
                    if key in step_record:
                        self.writer.add_scalar(f"train/{key}", step_record[key], step.global_step)

    def end_epoch(self, epoch: int, lr: float, val_episodes: Optional[Iterable], val_total: Optional[int]) -> None:
        """The epoch's record (training statistics, validation), its line, its checkpoints."""
        s, ctx, sums = self.s, self.ctx, self.sums
        data_wait = self.clock.epoch_fraction()
        self.bar.close()
        if ctx.is_main:
            _warn_unconverged(sums, self.tol, epoch, s)
        n = max(float(sums[_BATCHES]), 1.0)
        record = {"kind": "epoch", "epoch": epoch + 1, "global_step": self.global_step, "lr": lr,
                  "train_loss": float(sums[_LOSS] / n), "train_accuracy": float(sums[_ACC] / n),
                  "train_unused_fraction": float(sums[_UNUSED] / n), **_epoch_convergence_keys(sums),
                  "data_wait_fraction": round(data_wait, 4), "elapsed_s": round(time.time() - self.t0, 2)}
        improved = self.validate(epoch, record, val_episodes, val_total)
        if ctx.is_main:
            msg = (f"epoch {epoch + 1}/{s.epochs}: loss {record['train_loss']:.4f} "
                   f"train acc {100 * record['train_accuracy']:.2f}% "
                   f"features used {100 * (1 - record['train_unused_fraction']):.1f}% "
                   f"data wait {100 * data_wait:.0f}%")
            if "val_accuracy" in record:
                msg += f" | val {100 * record['val_accuracy']:.2f} +- {100 * record['val_ci95']:.2f}%"
                msg += " (best)" if improved else ""
            tqdm.write(msg)
        self.log.write(record)
        if improved:
            self.checkpoint("best.pt", epoch + 1, 0)
        self.checkpoint("last.pt", epoch + 1, 0)
        barrier(ctx)

    def validate(self, epoch: int, record: Dict[str, Any], val_episodes: Optional[Iterable],
                 val_total: Optional[int]) -> bool:
        """Validation of ``epoch`` into ``record``; whether the epoch is the best so far
        (without validation, every epoch is)."""
        if val_episodes is None:
            self.best = {"epoch": epoch + 1, "val_accuracy": None, "val_ci95": None}
            record["best"] = True
            return True
        res = evaluate_episodes(self.model, val_episodes, self.device, ctx=self.ctx, progress=self.progress,
                                desc=f"val {epoch + 1}", total=val_total)
        summ = res.summary()
        self.last_val = summ
        record.update({"val_accuracy": summ["accuracy"], "val_ci95": summ["ci95"], "val_loss": summ["loss"],
                       "val_features_used_fraction": summ["features_used_fraction"]})
        record.update({f"val_{k}": summ[k] for k in ("max_rel_gap", "unconverged_episodes") if k in summ})
        improved = self.best is None or summ["accuracy"] > self.best["val_accuracy"]
        if improved:
            self.best = {"epoch": epoch + 1, "val_accuracy": summ["accuracy"], "val_ci95": summ["ci95"]}
        record["best"] = improved
        if self.writer:
            self.writer.add_scalar("val/accuracy", summ["accuracy"], epoch + 1)
        return improved
