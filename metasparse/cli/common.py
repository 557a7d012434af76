"""Flag helpers shared by the commands: JSON options and the meta-test episode flags."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Optional

from ..errors import ConfigError

__all__ = ["json_arg", "add_episode_flags", "episode_spec", "print_saved_episodes"]


def json_arg(text: Optional[str], flag: str) -> Optional[Dict[str, Any]]:
    """The JSON object given to ``flag`` (None when the flag was not given)."""
    if text is None:
        return None
    try:
        val = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag}: expected a JSON object such as '{{\"key\": 1}}', got {text!r} ({e.msg})") from None
    if not isinstance(val, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {text!r}")
    return val


def add_episode_flags(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`~metasparse.api.EpisodeSpec`, plus ``--device`` and ``--no-progress``."""
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--shot", type=int, nargs="+", help="support shots per class (default: 1 5)")
    p.add_argument("--way", type=int, help="classes per episode (default: the training way)")
    p.add_argument("--query", type=int, help="query examples per class (default 15)")
    p.add_argument("--episodes", type=int, help="episodes per shot (default: 1000; synthetic 500)")
    p.add_argument("--episodes-file", help="evaluate on the episodes saved in this file instead")
    p.add_argument("--save-episodes", help="save the sampled episodes to this file (reuse with --episodes-file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="episodes per forward pass (does not change results)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def episode_spec(args: argparse.Namespace):
    """The :class:`~metasparse.api.EpisodeSpec` of the flags of :func:`add_episode_flags`."""
    from ..api import EpisodeSpec
    return EpisodeSpec(split=args.split, shots=args.shot, way=args.way, query=args.query, n_episodes=args.episodes,
                       seed=args.seed, episodes_file=args.episodes_file, save_episodes=args.save_episodes,
                       batch_size=args.batch_size, data_root=args.data_root)


def print_saved_episodes(saved, n_episodes: int, way: int) -> None:
    """One line per episodes file written for ``--save-episodes``."""
    for k, path in saved.items():
        print(f"saved {n_episodes} {way}-way {k}-shot episodes to {path}")
