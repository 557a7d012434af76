"""MetaOptNet's meta-training / meta-testing defaults per dataset (Lee et al. 2019,
docs/maths.md section 6, and the flags of MetaOptNet's ``train.py`` / README).

Common: 5-way, 6 query images per class, 8 episodes per batch, 1000 batches per epoch,
60 epochs, SGD (momentum 0.9, Nesterov, weight decay 5e-4), lr 0.1 multiplied by
0.06 / 0.012 / 0.0024 from epochs 20 / 40 / 50 (1-based, as MetaOptNet's log numbers
them; see :func:`lr_factor`), validation after every epoch on 2000 5-shot 15-query
episodes, best checkpoint by validation accuracy. Per dataset:

=============  ==========  ==============  =================  ==========
dataset        train shot  label smoothing  DropBlock size     image size
=============  ==========  ==============  =================  ==========
mini-imagenet  15          0.1             5                  84
cifar-fs       5           0.0             2                  32
fc100          15          0.0             2                  32
=============  ==========  ==============  =================  ==========

``synthetic`` (vectors, MLP backbone) is a small CPU-sized setting of our own: Adam,
short epochs, no augmentation.

The dataset names are those of :data:`metasparse.registry.DATASETS` (which reads these
defaults through :func:`metasparse.registry.dataset_defaults`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

__all__ = ["TrainSettings", "DATASET_DEFAULTS", "COMMON_DEFAULTS", "lr_factor", "milestone_epochs", "LR_MILESTONE_FRACTIONS",
           "LEGACY_SCHEDULE"]

#: MetaOptNet's milestones 20 / 40 / 50 of 60 epochs as fractions: a new run of ``E`` epochs
#: gets the milestones ``round(f * E)`` (:func:`milestone_epochs`), fixed from then on
LR_MILESTONE_FRACTIONS = (1 / 3, 2 / 3, 5 / 6)
#: ``lr_schedule`` of runs created before the milestones were stored as epochs
LEGACY_SCHEDULE = "fractions"


@dataclass
class TrainSettings:
    """Everything the training loop needs besides the model and the data."""
    epochs: int = 60
    batches_per_epoch: int = 1000
    optimizer: str = "sgd"                       # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: List[float] = field(default_factory=lambda: [20, 40, 50])   # 1-based epochs (see lr_factor)
    lr_factors: List[float] = field(default_factory=lambda: [0.06, 0.012, 0.0024])
    lr_schedule: str = "epochs"                  # "epochs"; "fractions": runs made before (see lr_factor)
    label_smoothing: float = 0.0
    seed: int = 0
    checkpoint_every: int = 200                  # also save last.pt every this many batches (0: epoch end only)
    log_every: int = 10                          # metrics.jsonl step records every this many batches
    strict_solver: bool = False                  # an episode whose solve stops short of tol: error, not warning

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def milestone_epochs(epochs: int, fractions=LR_MILESTONE_FRACTIONS) -> List[int]:
    """The milestones of a new run of ``epochs`` epochs: ``round(f * epochs)`` (60 epochs:
    MetaOptNet's 20 / 40 / 50), but the i-th (0-based) at least epoch ``i + 2``: the first
    epoch always trains at ``--lr`` and no two decays fall on one epoch, so a short run
    (``--epochs`` <= 6, where the rounded fractions collapse onto epochs 1-2) decays one
    factor per epoch instead of starting at ``0.012 lr``.  They are stored in the run
    configuration, so raising ``--epochs`` on ``--resume`` keeps them."""
    return [max(int(round(f * epochs)), i + 2) for i, f in enumerate(fractions)]


def lr_factor(epoch: int, settings: TrainSettings) -> float:
    r"""Multiplier of the base lr in (0-based) ``epoch``.

    MetaOptNet builds ``LambdaLR(opt, lambda e: 1 if e < 20 else 0.06 if e < 40 else
    0.012 if e < 50 else 0.0024)`` (construction sets the lr of ``e = 0``) and calls
    ``scheduler.step()`` at the *start* of each epoch ``e = 1..60`` of its loop, so its
    epoch ``e`` (1-based, as its log prints it) trains with ``lambda(e)``: 19 epochs at
    0.1, the first drop in epoch 20.  Here: the last factor whose milestone ``m`` (stored
    as an epoch, ``settings.lr_milestones``) satisfies ``epoch + 1 >= m``.

    ``lr_schedule == "fractions"`` (runs created before the milestones were stored as
    epochs) keeps what those runs trained with: fractions of ``settings.epochs`` and
    ``epoch >= round(fraction * epochs)``, one epoch later than MetaOptNet.
    """
    f = 1.0
    if settings.lr_schedule == LEGACY_SCHEDULE:
        for frac, fac in zip(settings.lr_milestones, settings.lr_factors):
            if epoch >= round(frac * settings.epochs):
                f = fac
        return f
    if settings.lr_schedule != "epochs":
        raise ValueError(f"lr_schedule must be 'epochs' or {LEGACY_SCHEDULE!r}, got {settings.lr_schedule!r}")
    for m, fac in zip(settings.lr_milestones, settings.lr_factors):
        if epoch + 1 >= m:
            f = fac
    return f


_COMMON = {
    "way": 5, "query": 6, "episodes_per_batch": 8, "epochs": 60, "batches_per_epoch": 1000,
    "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4,
    "val_episodes": 2000, "val_shot": 5, "val_query": 15, "test_query": 15, "test_episodes": 1000,
    "backbone": "resnet12",
}
#: the protocol every dataset shares (a registered dataset's defaults start from it)
COMMON_DEFAULTS = _COMMON

DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "mini-imagenet": {**_COMMON, "train_shot": 15, "label_smoothing": 0.1,
                      "backbone_options": {"dropblock_size": 5, "drop_rate": 0.1, "avg_pool": False}},
    "cifar-fs": {**_COMMON, "train_shot": 5, "label_smoothing": 0.0,
                 "backbone_options": {"dropblock_size": 2, "drop_rate": 0.1, "avg_pool": False}},
    "fc100": {**_COMMON, "train_shot": 15, "label_smoothing": 0.0,
              "backbone_options": {"dropblock_size": 2, "drop_rate": 0.1, "avg_pool": False}},
    "synthetic": {**_COMMON, "train_shot": 5, "query": 10, "label_smoothing": 0.0, "epochs": 10,
                  "batches_per_epoch": 50, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                  "val_episodes": 200, "test_episodes": 500, "backbone": "mlp",
                  "backbone_options": {"hidden": [64, 64]}},
    # Omniglot (28x28 grey, rotations as classes): the Conv-4 of Vinyals et al. / Snell et al.
    # (64 features at 28x28) and ProtoNet's optimiser (Adam, lr 1e-3, halved at each milestone,
    # 5 queries per class); 20-way 5-shot episodes at train and test time (docs/data.md)
    "omniglot": {**_COMMON, "way": 20, "train_shot": 5, "query": 5, "episodes_per_batch": 4, "epochs": 20,
                 "batches_per_epoch": 500, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                 "lr_factors": [0.5, 0.25, 0.125], "label_smoothing": 0.0, "backbone": "conv4",
                 "backbone_options": {}},
    # CUB-200-2011 (84x84 RGB, Chen et al.'s 100 / 50 / 50 split): miniImageNet's protocol
    "cub": {**_COMMON, "train_shot": 15, "label_smoothing": 0.1,
            "backbone_options": {"dropblock_size": 5, "drop_rate": 0.1, "avg_pool": False}},
    # tieredImageNet (84x84 RGB, 351 / 97 / 160 classes): MetaOptNet's README trains it with
    # --train-shot 10 and no --eps (label smoothing 0), DropBlock size 5 as miniImageNet
    "tiered-imagenet": {**_COMMON, "train_shot": 10, "label_smoothing": 0.0,
                        "backbone_options": {"dropblock_size": 5, "drop_rate": 0.1, "avg_pool": False}},
}

