"""A plugin as a user writes it, outside the package: a dataset, a backbone and a head,
registered with metasparse's three public calls (tests/test_plugins.py loads it)."""
import numpy as np
import torch
from torch import nn

import metasparse
from episodes import FewShotSource
from metasparse.heads import Head, HeadFit

SPLIT_CLASSES = {"train": range(0, 10), "val": range(10, 16), "test": range(16, 22)}


def load_blobs(data_root, split, per_class=24, dim=6):
    """Gaussian blobs: class c of a split centred at a fixed random mean (seeded by c)."""
    xs, ys = [], []
    for c in SPLIT_CLASSES[split]:
        rng = np.random.default_rng(c)
        xs.append(rng.normal(size=dim) * 3 + rng.normal(size=(per_class, dim)))
        ys += [c] * per_class
    return FewShotSource(torch.tensor(np.concatenate(xs), dtype=torch.float32), ys, split, "blobs")


class TinyNet(nn.Module):
    def __init__(self, in_dim, out_dim=8):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.lin(x)


class NearestMean(Head):
    """Squared-distance-to-class-mean scores."""

    def fit(self, support, support_labels, n_way):
        self.check_support(support, support_labels, n_way)
        onehot = nn.functional.one_hot(support_labels, n_way).to(support.dtype)        # (B, n, N)
        means = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)          # (B, N, d)
        fit = HeadFit(weights=2 * means.transpose(1, 2), active=torch.ones(support.shape[0], support.shape[2],
                                                                            dtype=torch.bool))
        fit.means = means
        return fit

    def _scores(self, query, support, support_labels, n_way, fit):
        return -torch.cdist(query, fit.means) ** 2


metasparse.register_dataset("blobs", load_blobs, needs_data_root=False,
                            defaults={"backbone": "tiny-net", "train_shot": 2, "query": 3, "episodes_per_batch": 2,
                                      "epochs": 2, "batches_per_epoch": 3, "val_episodes": 4, "optimizer": "adam",
                                      "lr": 1e-2, "weight_decay": 0.0, "test_episodes": 20, "val_shot": 2, "val_query": 5})
metasparse.register_backbone("tiny-net", TinyNet, images=False)
metasparse.register_head("nearest-mean", NearestMean, aliases=("nm",))
