"""Label volumes for tests (imported by test modules; pytest puts tests/ on sys.path)."""

import numpy as np


def random_instances(rng: np.random.Generator, shape, num_seeds=8, background=0.3):
    """Densely packed touching instances: a Voronoi tessellation of random seeds in which
    some cells are background (0). ids are 1..num_seeds."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    seeds = rng.uniform(0, 1, size=(num_seeds, len(shape))) * np.array(shape)
    d = ((grid[..., None, :] - seeds) ** 2).sum(-1)
    labels = d.argmin(-1).astype(np.uint64) + 1
    background_ids = np.flatnonzero(rng.uniform(size=num_seeds) < background) + 1
    labels[np.isin(labels, background_ids)] = 0
    return labels
