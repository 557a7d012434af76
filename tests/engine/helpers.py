"""Small pieces shared by the engine tests: a tiny nearest-prototype head with the heads'
``predict`` contract (so the engine is tested independently of the solver heads)."""
from dataclasses import dataclass

import torch
from torch import nn

from episodes.fixed import sample_fixed_episodes
from episodes.sampler import EpisodeSampler
from episodes.sources.synthetic import make_synthetic_source
from metasparse.backbones import build_backbone
from metasparse.engine.model import FewShotModel
from metasparse.engine.streams import FixedStream, SamplerStream

SOURCE = dict(seed=0, n_factors=6, factors_per_class=2, n_classes=(10, 5, 5), examples_per_class=20,
              mixing="rotation")


@dataclass
class Fit:
    active: torch.Tensor

    @property
    def unused_fraction(self):
        return 1.0 - self.active.float().mean(1)


@dataclass
class Out:
    logits: torch.Tensor
    fit: Fit


class PrototypeHead(nn.Module):
    """logits = -scale * ||q - mean_c||^2 ; features with |mean| < threshold count as unused."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def predict(self, query, support, support_labels, n_way):
        oh = torch.nn.functional.one_hot(support_labels, n_way).to(support.dtype)
        protos = oh.transpose(1, 2) @ support / oh.sum(1).unsqueeze(-1)
        logits = -self.scale * ((query.unsqueeze(2) - protos.unsqueeze(1)) ** 2).sum(-1)
        return Out(logits, Fit(protos.abs().amax(1) > 0.05))


@dataclass
class GapFit(Fit):
    rel_gap: torch.Tensor
    converged: torch.Tensor
    tol: float


class GapReportingHead(PrototypeHead):
    """The PrototypeHead reporting a made-up per-episode "relative gap" (|first support
    feature|) and ``converged = rel_gap <= tol``: some episodes of some batches "miss" the
    tolerance, independently of any solver, to test the engine's bookkeeping."""

    tol = 0.3

    def predict(self, query, support, support_labels, n_way):
        out = super().predict(query, support, support_labels, n_way)
        gap = support[:, 0, 0].detach().abs()
        return Out(out.logits, GapFit(out.fit.active, gap, gap <= self.tol, self.tol))


def tiny_model(seed=0, dropout=0.0, head=None):
    """MLP backbone (6 -> 16 -> 6 features) + ``head`` (default: the PrototypeHead above)."""
    torch.manual_seed(seed)
    bb = build_backbone("mlp", in_dim=6, out_dim=6, hidden=(16,), dropout=dropout)
    return FewShotModel(bb, head if head is not None else PrototypeHead())


def tiny_streams(batches=4, episodes_per_batch=4, val=8):
    tr = make_synthetic_source("train", **SOURCE)
    va = make_synthetic_source("val", **SOURCE)
    stream = SamplerStream(EpisodeSampler(tr, 3, 2, 3, episodes_per_batch, seed=1), batches)
    val_eps = FixedStream(sample_fixed_episodes(va, 3, 2, 3, val, seed=2), va, 4) if val else None
    return stream, val_eps


SPEC = {"config": {"test": True}, "backbone": {"name": "mlp", "options": {}}, "head": {"name": "proto", "options": {}}}
