"""episodes: few-shot data sources, episodic sampling and transforms (never imports metasparse).

Main entry points::

    from episodes import load_source, episode_loader
    source = load_source("mini-imagenet", "/data", "train")
    loader = episode_loader(source, way=5, shot=15, query=6, episodes_per_batch=8,
                            n_batches=1000, seed=0, transform="train", num_workers=2)
"""
from .types import EpisodeBatch
from .sources import FewShotSource, build_cifar_fs_fc100, load_source
from .sampler import EpisodeDataset, EpisodeSampler, batch_seed, episode_loader, keep_freed_memory
from .transforms import eval_transform, train_transform
from .fixed import FixedEpisodes, load_episodes, sample_fixed_episodes, save_episodes

__all__ = ["EpisodeBatch", "FewShotSource", "load_source", "build_cifar_fs_fc100", "EpisodeSampler",
           "EpisodeDataset", "episode_loader", "batch_seed", "keep_freed_memory", "train_transform", "eval_transform",
           "FixedEpisodes", "sample_fixed_episodes", "save_episodes", "load_episodes"]
