"""MetaOptNet's learning-rate schedule, exactly, and ``--resume`` never changing it.

The table below is transcribed from MetaOptNet's ``train.py`` (github.com/kjunelee/MetaOptNet):
``LambdaLR(SGD(lr=0.1), lambda e: 1.0 if e < 20 else (0.06 if e < 40 else 0.012 if e < 50
else 0.0024))`` with ``lr_scheduler.step()`` called at the start of each epoch
``for epoch in range(1, 61)``: the learning rate its log prints for each (1-based) epoch."""
import json

import pytest
import torch

from metasparse.api import TrainConfig, train
from metasparse.engine.config import TrainSettings, lr_factor, milestone_epochs
from metasparse.errors import ConfigError

# (first epoch, last epoch) -> lr, MetaOptNet's train.py with its defaults (60 epochs, lr 0.1)
METAOPTNET_TABLE = {(1, 19): 0.1, (20, 39): 0.1 * 0.06, (40, 49): 0.1 * 0.012, (50, 60): 0.1 * 0.0024}


def _table_lr(epoch_1based):
    return next(lr for (a, b), lr in METAOPTNET_TABLE.items() if a <= epoch_1based <= b)


def test_schedule_equals_the_metaoptnet_table():
    s = TrainSettings()               # our defaults: 60 epochs, lr 0.1, milestones 20 / 40 / 50
    assert milestone_epochs(60) == [20, 40, 50] == s.lr_milestones
    for e in range(1, 61):
        assert s.lr * lr_factor(e - 1, s) == pytest.approx(_table_lr(e), rel=1e-12), e


def test_schedule_equals_torch_lambdalr_stepped_as_metaoptnet_steps_it():
    """An independent reference: torch's LambdaLR, stepped at the start of each epoch."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 1.0 if e < 20 else (0.06 if e < 40 else 0.012 if e < 50 else 0.0024))
    s = TrainSettings()
    for epoch in range(1, 61):
        opt.step()                 # (torch warns when step() of the scheduler comes first)
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(s.lr * lr_factor(epoch - 1, s), rel=1e-12), epoch


def test_legacy_runs_keep_their_schedule():
    s = TrainSettings(epochs=60, lr_milestones=[1 / 3, 2 / 3, 5 / 6], lr_schedule="fractions")
    assert [lr_factor(e, s) for e in (19, 20, 39, 40, 49, 50)] == [1, .06, .06, .012, .012, .0024]


SOURCE = {"n_factors": 6, "factors_per_class": 2, "n_classes": [6, 4, 4], "examples_per_class": 20}
TINY = dict(dataset="synthetic", source_options=SOURCE, head="protonet", batches_per_epoch=1, val_episodes=0,
            way=3, query=2, episodes_per_batch=2, device="cpu", progress=False, log_every=1, checkpoint_every=1)


def _epoch_lrs(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in recs if r["kind"] == "epoch"]


def test_resume_can_raise_epochs_and_keeps_the_schedule(tmp_path):
    out = tmp_path / "run"
    first = train(TrainConfig(out=out, epochs=6, stop_after_steps=3, **TINY))   # killed in epoch 4
    assert first.stopped and first.config["settings"]["lr_milestones"] == [2, 4, 5]
    res = train(TrainConfig(out=out, resume=True, epochs=9, device="cpu", progress=False))
    lr0 = first.config["settings"]["lr"]
    factors = [1, .06, .06, .012, .0024, .0024, .0024, .0024, .0024]   # milestones 2 / 4 / 5 kept
    assert _epoch_lrs(out) == pytest.approx([lr0 * f for f in factors])
    assert res.global_step == 9
    saved = json.loads((out / "config.json").read_text())
    assert saved["settings"]["epochs"] == 9 and saved["settings"]["lr_milestones"] == [2, 4, 5]
    # a finished run resumed again without --epochs does nothing more
    again = train(TrainConfig(out=out, resume=True, device="cpu", progress=False))
    assert again.global_step == 9 and len(_epoch_lrs(out)) == 9
    with pytest.raises(ConfigError, match="can only raise --epochs"):
        train(TrainConfig(out=out, resume=True, epochs=4, device="cpu", progress=False))


def test_raised_epochs_equal_an_uninterrupted_run_with_the_same_milestones(tmp_path):
    """6 epochs then raised to 8 on resume = one run of 8 epochs with milestones 2 / 4 / 5."""
    tiny = {**TINY, "batches_per_epoch": 2}
    a = tmp_path / "a"
    train(TrainConfig(out=a, epochs=6, **tiny))
    train(TrainConfig(out=a, resume=True, epochs=8, device="cpu", progress=False))
    b = tmp_path / "b"
    train(TrainConfig(out=b, epochs=8, stop_after_steps=1, **tiny))   # epoch 1 trains at lr x1 either way
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["settings"]["lr_milestones"] == [3, 5, 7]               # a new 8-epoch run scales them
    cfg["settings"]["lr_milestones"] = [2, 4, 5]
    (b / "config.json").write_text(json.dumps(cfg))
    train(TrainConfig(out=b, resume=True, device="cpu", progress=False))
    assert _epoch_lrs(a) == _epoch_lrs(b)
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_of_a_legacy_run_refuses_to_move_its_milestones(tmp_path):
    out = tmp_path / "old"
    train(TrainConfig(out=out, epochs=3, **TINY))
    cfg = json.loads((out / "config.json").read_text())
    cfg["settings"]["lr_milestones"] = [1 / 3, 2 / 3, 5 / 6]
    del cfg["settings"]["lr_schedule"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="fractions"):
        train(TrainConfig(out=out, resume=True, epochs=5, device="cpu", progress=False))


# MetaOptNet's train.py / test.py defaults and the flags of its README's training commands
METAOPTNET_COMMON = {"way": 5, "query": 6, "episodes_per_batch": 8, "batches_per_epoch": 1000, "epochs": 60,
                     "lr": 0.1, "weight_decay": 5e-4, "optimizer": "sgd", "val_episodes": 2000, "val_shot": 5,
                     "val_query": 15, "test_episodes": 1000, "test_query": 15}
METAOPTNET_PER_DATASET = {   # --train-shot, --eps, DropBlock size (train.py get_model)
    "mini-imagenet": (15, 0.1, 5), "cifar-fs": (5, 0.0, 2), "fc100": (15, 0.0, 2)}


@pytest.mark.parametrize("dataset", sorted(METAOPTNET_PER_DATASET))
def test_dataset_defaults_are_metaoptnet_protocol(dataset):
    from episodes.transforms import crop_padding
    from metasparse.registry import dataset_defaults
    d = dataset_defaults(dataset)
    assert {k: d[k] for k in METAOPTNET_COMMON} == METAOPTNET_COMMON
    shot, eps, block = METAOPTNET_PER_DATASET[dataset]
    assert (d["train_shot"], d["label_smoothing"], d["backbone_options"]["dropblock_size"]) == (shot, eps, block)
    assert d["backbone_options"]["drop_rate"] == 0.1 and d["backbone_options"]["avg_pool"] is False
    assert (crop_padding(84), crop_padding(32)) == (8, 4)   # RandomCrop(84, padding=8) / RandomCrop(32, padding=4)
    cfg = TrainConfig(out="unused", dataset=dataset, data_root="unused").run_config()["settings"]
    assert cfg["lr_milestones"] == [20, 40, 50] and cfg["nesterov"] and cfg["momentum"] == 0.9


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 6, 8, 12, 30, 60, 90])
def test_short_runs_start_at_the_base_lr_and_decay_one_step_at_a_time(epochs):
    """--epochs <= 4 used to round the first milestone to epoch 1: the run started at
    0.012 lr (0.0012 for lr 0.1) and never trained at --lr."""
    m = milestone_epochs(epochs)
    s = TrainSettings(epochs=epochs, lr_milestones=m)
    factors = [lr_factor(e, s) for e in range(epochs)]
    assert factors[0] == 1.0
    assert m == sorted(set(m)) and m[0] >= 2               # distinct milestones, none on epoch 1
    steps = [s.lr_factors.index(f) if f != 1.0 else -1 for f in factors]
    assert all(b - a in (0, 1) for a, b in zip(steps, steps[1:]))   # one factor at a time
    if epochs >= 12:                                       # MetaOptNet's fractions where they fit
        assert m == [round(epochs / 3), round(2 * epochs / 3), round(5 * epochs / 6)]
