"""PNG figures people look at while and after training: loss, validation scores, slices.

Everything is drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global
state, no display needed), so it is safe in worker processes and on headless machines.
Files are written atomically (temporary file, then rename): a reader never sees half a PNG.

- :func:`plot_loss`: training loss per iteration, with a moving average, and the learning
  rate.
- :func:`plot_validation`: one panel per validation criterion, the score (at the best
  post-processing levels of each validation) against the iteration.
- :func:`plot_slices`: a row of 2-D images (the middle z slice of 3-D arrays), for raw /
  target / prediction / weight snapshots and the demo's raw / prediction / segmentation /
  ground truth. Label images get a random colour per id (0 stays black).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["label_colors", "middle_slice", "plot_loss", "plot_slices", "plot_validation"]

Kind = Literal["intensity", "distance", "weight", "labels"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    if len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_loss(
    iterations: Sequence[int],
    losses: Sequence[float],
    path: str | Path,
    *,
    learning_rates: Sequence[float] | None = None,
) -> Path:
    """Training loss against iteration (log scale, with a moving average) as a PNG.

    ``learning_rates`` (one per iteration) adds a second panel with the schedule.
    """
    its = np.asarray(iterations, dtype=np.int64)
    loss = np.asarray(losses, dtype=np.float64)
    if its.shape != loss.shape or its.ndim != 1:
        raise ValueError(
            f"iterations and losses must be 1-D and of equal length, got {its.shape} and "
            f"{loss.shape}"
        )
    panels = 2 if learning_rates is not None else 1
    fig = _figure(7, 3.2 * panels)
    ax = fig.add_subplot(panels, 1, 1)
    if len(its):
        window = max(1, len(its) // 50)
        ax.plot(its, loss, color="0.75", linewidth=0.6, label="loss")
        ax.plot(its, _moving_average(loss, window), color="C0", label=f"mean of {window}")
        if np.all(loss[np.isfinite(loss)] > 0) and np.isfinite(loss).any():
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted MSE")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    if learning_rates is not None:
        lr = np.asarray(learning_rates, dtype=np.float64)
        if lr.shape != its.shape:
            raise ValueError(
                f"learning_rates must have one value per iteration ({its.shape}), got "
                f"{lr.shape}"
            )
        ax2 = fig.add_subplot(panels, 1, 2)
        ax2.plot(its, lr, color="C1")
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("learning rate")
        ax2.grid(alpha=0.3)
    # Fixed margins: tight_layout costs more than drawing the plot.
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.1 if panels == 2 else 0.16,
                        top=0.92 if panels == 2 else 0.88, hspace=0.35)
    return _save(fig, path)


def plot_validation(
    scores: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    *,
    best: Mapping[str, int] | None = None,
) -> Path:
    """One panel per criterion: ``scores[name] = (iterations, values)`` as a PNG.

    ``best[name]`` (an iteration) is marked with a star.
    """
    if not scores:
        raise ValueError("scores must hold at least one criterion")
    fig = _figure(7, 2.8 * len(scores))
    for i, (name, (its, values)) in enumerate(scores.items()):
        x = np.asarray(its, dtype=np.int64)
        y = np.asarray(values, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(
                f"criterion {name!r}: {x.size} iterations but {y.size} values (need one "
                "value per iteration)"
            )
        ax = fig.add_subplot(len(scores), 1, i + 1)
        ax.plot(x, y, marker="o", markersize=3, color=f"C{i}")
        if best is not None and name in best and best[name] in set(x.tolist()):
            at = int(np.flatnonzero(x == best[name])[0])
            ax.plot([x[at]], [y[at]], marker="*", markersize=14, color="gold",
                    markeredgecolor="k", linestyle="none", label=f"best: {y[at]:.4f}")
            ax.legend(loc="best")
        ax.set_ylabel(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("validation (best post-processing levels per iteration)")
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.08, top=0.92, hspace=0.45)
    return _save(fig, path)


def middle_slice(array: np.ndarray, dims: int) -> np.ndarray:
    """The 2-D image to show for an array with ``dims`` spatial axes (last axes).

    Leading non-spatial axes (channels) take index 0; 3-D arrays give their middle z slice.
    """
    a = np.asarray(array)
    if dims not in (2, 3) or a.ndim < dims:
        raise ValueError(f"expected an array with {dims} spatial axes, got shape {a.shape}")
    while a.ndim > dims:
        a = a[0]
    return a[a.shape[0] // 2] if dims == 3 else a


def label_colors(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB float image: a pseudo-random colour per id (the same id, the same colour), 0 black."""
    ids = np.asarray(labels).astype(np.uint64)
    # A multiplicative hash spreads consecutive ids over very different colours.
    hashed = (ids + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    rgb = np.stack(
        [((hashed >> np.uint64(s)) & np.uint64(0xFF)).astype(np.float32) for s in (16, 32, 48)],
        axis=-1,
    )
    rgb = 0.25 + 0.75 * rgb / 255.0
    rgb[ids == 0] = 0.0
    return rgb


def plot_slices(
    images: Mapping[str, tuple[np.ndarray, Kind]],
    path: str | Path,
    *,
    dims: int,
    title: str | None = None,
) -> Path:
    """A row of images, ``images[name] = (array, kind)``, each shown by :func:`middle_slice`.

    ``kind``: ``"intensity"`` (grey, own range), ``"distance"`` (inner distances, fixed 0..1
    colour map), ``"weight"`` (own range) or ``"labels"`` (colour per id). Each title
    gives the shown slice's value range (or number of ids).
    """
    if not images:
        raise ValueError("images must hold at least one image")
    for name, (_, kind) in images.items():
        if kind not in ("intensity", "distance", "weight", "labels"):
            raise ValueError(
                f"image {name!r}: kind must be intensity, distance, weight or labels, got "
                f"{kind!r}"
            )
    fig = _figure(3.0 * len(images), 3.4)
    # Value ranges go into the titles: colour bars and tight_layout would triple the time
    # a snapshot takes, and snapshots are drawn while training waits.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.05)
    for i, (name, (array, kind)) in enumerate(images.items()):
        image = middle_slice(array, dims)
        ax = fig.add_subplot(1, len(images), i + 1)
        if kind == "labels":
            ax.imshow(label_colors(image), interpolation="nearest")
            label = f"{name}\n{len(np.unique(image[image != 0]))} ids"
        else:
            cmap = {"intensity": "gray", "distance": "magma", "weight": "viridis"}[kind]
            limits = (0.0, 1.0) if kind == "distance" else (None, None)
            ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
            scale = " (colours 0..1)" if kind == "distance" else ""
            label = f"{name}\n{float(np.min(image)):.3g} .. {float(np.max(image)):.3g}{scale}"
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
