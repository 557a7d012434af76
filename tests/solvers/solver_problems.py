import torch

from metasparse.solvers.objectives import one_hot


def make_problem(B=3, n=10, d=8, k=3, seed=0, dtype=torch.float64, balanced=False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=dtype)
    if balanced:
        labels = torch.arange(k).repeat(n // k + 1)[:n].expand(B, n).contiguous()
    else:
        labels = torch.randint(0, k, (B, n), generator=g)
    return X, labels, one_hot(labels, k, dtype)


