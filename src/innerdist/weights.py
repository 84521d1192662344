"""Class-balanced loss weights with running ("moving") class frequencies.

Each class gets weight ``1 / (num_classes * frac)``, where ``frac`` is its share of all
voxels seen so far (clipped to ``[clipmin, clipmax]``), so rare classes weigh more. Counts
carry over between calls through ``moving_counts``, which keeps the weights of a class that
is absent from one batch sensible::

    >>> import numpy as np
    >>> w, counts = balance_weights(np.array([[0, 1, 2]] * 3), 3)
    >>> float(w[0, 0]), counts[0][1]
    (1.1111111..., (3, 10))

(Every class: 3 of 9 voxels, so ``(num, den) = (0 + 3, 1 + 9)``, frac 0.3, weight
``1 / (3 * 0.3)``.)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["MovingCounts", "balance_weights"]

MovingCounts = list[dict[int, tuple[int, int]]]
"""Per slab (in C order of the slab grid): ``{class: (num, den)}``."""


def _slab_slices(shape: tuple[int, ...], slab: Sequence[int]) -> list[tuple[slice, ...]]:
    """Slices of every slab, in C order of the slab grid (``-1`` = the whole axis)."""
    sizes = [s if k == -1 else k for s, k in zip(shape, slab, strict=True)]
    ranges = [range(0, s, k) for s, k in zip(shape, sizes, strict=True)]
    return [
        tuple(slice(b, b + k) for b, k in zip(begin, sizes, strict=True))
        for begin in itertools.product(*ranges)
    ]


def balance_weights(
    label_data: np.ndarray,
    num_classes: int,
    masks: Sequence[np.ndarray] = (),
    slab: Sequence[int] | None = None,
    clipmin: float = 0.05,
    clipmax: float = 0.95,
    moving_counts: MovingCounts | None = None,
) -> tuple[np.ndarray, MovingCounts]:
    """Weights that balance ``num_classes`` classes, slab by slab.

    Parameters
    ----------
    label_data:
        Integer class labels in ``[0, num_classes)``, any shape.
    num_classes:
        Number of classes (>= 1).
    masks:
        Arrays of ``label_data``'s shape; their product scales the weights and 0 excludes a
        voxel from the counts.
    slab:
        Slab size per axis, ``-1`` for the whole axis (default: one slab, the whole array).
        Each slab is balanced on its own, e.g. ``(1, -1, -1, -1)`` balances each channel.
    clipmin, clipmax:
        Bounds for a class's frequency before it is inverted.
    moving_counts:
        The counts returned by the previous call (``None`` starts from ``(0, 1)``).

    Returns
    -------
    weights, moving_counts
        float32 weights of ``label_data``'s shape, and the updated counts.
    """
    labels = np.asarray(label_data)
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label_data must hold integer class labels, got dtype {labels.dtype}")
    if not 0.0 < clipmin <= clipmax <= 1.0:
        raise ValueError(f"need 0 < clipmin <= clipmax <= 1, got {clipmin}, {clipmax}")
    if labels.size:
        low, high = labels.min(), labels.max()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
                f"got values in [{low}, {high}]"
            )
    error_scale = np.ones(labels.shape, dtype=np.float32)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(
                f"mask {i} has shape {mask.shape}, expected the labels' shape {labels.shape}"
            )
        error_scale *= mask
    if slab is None:
        slab = (-1,) * labels.ndim
    slab = tuple(int(s) for s in slab)
    if len(slab) != labels.ndim:
        raise ValueError(
            f"slab {slab} has {len(slab)} entries, expected one per axis of labels with shape "
            f"{labels.shape}"
        )
    if any(s == 0 or s < -1 for s in slab):
        raise ValueError(f"slab sizes must be positive or -1, got {slab}")
    slices = _slab_slices(labels.shape, slab)
    if moving_counts is None:
        moving_counts = [{c: (0, 1) for c in range(num_classes)} for _ in slices]
    elif len(moving_counts) != len(slices):
        raise ValueError(
            f"moving_counts has {len(moving_counts)} slabs, expected {len(slices)} for labels "
            f"of shape {labels.shape} and slab {slab}"
        )

    weights = np.empty(labels.shape, dtype=np.float32)
    updated: MovingCounts = []
    for index, counts in zip(slices, moving_counts, strict=True):
        scale = error_scale[index]
        slab_labels = labels[index]
        masked_in = int(round(float(scale.sum())))
        present = np.bincount(
            slab_labels[scale != 0].ravel().astype(np.intp), minlength=num_classes
        )
        new_counts: dict[int, tuple[int, int]] = {}
        class_weights = np.empty(num_classes, dtype=np.float64)
        for c in range(num_classes):
            num, den = counts.get(c, (0, 1))
            num, den = num + int(present[c]), den + masked_in
            new_counts[c] = (num, den)
            frac = min(max(num / den, clipmin), clipmax)
            class_weights[c] = 1.0 / (num_classes * frac)
        weights[index] = scale * class_weights[slab_labels].astype(np.float32)
        updated.append(new_counts)
    return weights, updated
