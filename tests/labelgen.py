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


def _throw_balls(rng, shape, voxel_size, radii, fill, grow=1.0, attempts=20000):
    """Dart throwing: centres and radii (world units; radii log-uniform in ``radii`` voxels
    of the finest axis) until ``fill`` of the volume is covered or ``attempts`` run out.
    Balls overlap, so that their power cells touch, but every ball keeps a core: the
    power-diagram face to each neighbour (for radii ``grow`` times as large) lies at least
    0.7 of its radius from its centre, so no object is cut down to a sliver."""
    unit = min(voxel_size)
    extent = np.array(shape, float) * np.array(voxel_size, float)
    centres, sizes = [], []
    covered, volume = 0.0, float(np.prod(extent))
    dims = len(shape)
    ball_volume = np.pi if dims == 2 else 4 / 3 * np.pi
    for _ in range(attempts):
        if covered >= fill * volume:
            break
        r = float(np.exp(rng.uniform(np.log(radii[0]), np.log(radii[1])))) * unit
        c = rng.uniform(0, 1, dims) * extent
        if centres:
            d = np.maximum(np.linalg.norm(np.array(centres) - c, axis=1), 1e-9)
            others = np.array(sizes)
            # distance from the new centre to the power face with each other ball
            face = (d**2 + grow**2 * (r**2 - others**2)) / (2 * d)
            if (face < 0.7 * r).any() or (d - face < 0.7 * others).any():
                continue
        centres.append(c)
        sizes.append(r)
        covered += ball_volume * r**dims
    return np.array(centres).reshape(-1, dims), np.array(sizes)


def _power_cells(shape, voxel_size, centres, sizes, grow=1.0):
    """Each voxel goes to the ball (radius ``grow`` times its size) of smallest power
    distance ``|x - c|^2 - r^2`` among those that contain it: cells of a power diagram cut
    by their balls, so every object is convex and neighbours touch along flat faces."""
    voxel = np.array(voxel_size, float)
    labels = np.zeros(shape, np.uint32)
    best = np.full(shape, np.inf)
    for i, (c, r) in enumerate(zip(centres, sizes * grow), start=1):
        lo = np.maximum(np.floor((c - r) / voxel).astype(int), 0)
        hi = np.minimum(np.ceil((c + r) / voxel).astype(int) + 1, shape)
        if (hi <= lo).any():
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.ogrid[box]
        power = sum(((g * v) - ci) ** 2 for g, v, ci in zip(grids, voxel, c)) - r * r
        take = (power <= 0) & (power < best[box])
        best[box][take] = power[take]
        labels[box][take] = i
    return labels


def _consecutive(labels):
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def packed_balls(rng, shape, voxel_size=None, radii=(3, 30), fill=0.45):
    """Touching balls (discs in 2-D) of radii spanning ``radii`` voxels, packed until
    ``fill`` of the volume is covered. Round in voxels by default (``radii`` voxels along
    every axis); with ``voxel_size`` round in world units instead, radii counted in voxels
    of the finest axis (on a (40, 8, 8) grid a radius of 3 is then one slice thick).
    Objects are convex; ids ``1..N`` (uint32), 0 between them."""
    voxel_size = voxel_size or (1,) * len(shape)
    centres, sizes = _throw_balls(rng, shape, voxel_size, radii, fill)
    return _consecutive(_power_cells(shape, voxel_size, centres, sizes))


def grown_cells(rng, shape, voxel_size=None, radii=(3, 30), fill=0.6, gaps=0.5):
    """Cells grown from seeds until they meet (a power diagram limited to 1.3 times each
    seed's radius), tissue-like: most cells touch several neighbours. Radii and
    ``voxel_size`` as in :func:`packed_balls`. Between a fraction
    ``gaps`` of the touching pairs a background gap one voxel wide is cut (from the cell
    with the lower id)."""
    voxel_size = voxel_size or (1,) * len(shape)
    centres, sizes = _throw_balls(rng, shape, voxel_size, radii, fill, grow=1.3)
    labels = _power_cells(shape, voxel_size, centres, sizes, grow=1.3)
    gap = rng.uniform(size=(len(sizes) + 1, len(sizes) + 1)) < gaps
    gap = gap | gap.T
    cut = np.zeros(shape, bool)
    for axis in range(len(shape)):
        a = np.moveaxis(labels, axis, 0)
        below, above = a[:-1], a[1:]
        faces = (below != 0) & (above != 0) & (below != above)
        faces &= gap[below, above]
        c = np.moveaxis(cut, axis, 0)
        c[:-1] |= faces & (below < above)
        c[1:] |= faces & (above < below)
    labels[cut] = 0
    return _consecutive(labels)
