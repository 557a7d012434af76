"""episodes: few-shot data sources, episodic sampling and transforms (never imports metasparse).

Main entry points::

    from episodes import load_source, episode_loader
    source = load_source("mini-imagenet", "/data", "train")
    loader = episode_loader(source, way=5, shot=15, query=6, episodes_per_batch=8,
                            n_batches=1000, seed=0, transform="train", num_workers=2)
"""
import importlib

# name -> submodule; loaded on first use, so that ``import episodes.sampler`` (or a
# loader) does not pay for the others
_EXPORTS = {
    "EpisodeBatch": "types", "FewShotSource": "sources", "build_cifar_fs_fc100": "sources",
    "load_source": "sources", "EpisodeDataset": "sampler", "EpisodeSampler": "sampler",
    "batch_seed": "sampler", "episode_loader": "sampler", "keep_freed_memory": "sampler",
    "eval_transform": "transforms", "train_transform": "transforms", "FixedEpisodes": "fixed",
    "load_episodes": "fixed", "sample_fixed_episodes": "fixed", "save_episodes": "fixed",
}

__all__ = ["EpisodeBatch", "FewShotSource", "load_source", "build_cifar_fs_fc100", "EpisodeSampler",
           "EpisodeDataset", "episode_loader", "batch_seed", "keep_freed_memory", "train_transform", "eval_transform",
           "FixedEpisodes", "sample_fixed_episodes", "save_episodes", "load_episodes"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'episodes' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
