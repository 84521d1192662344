"""The training configuration: one validated YAML file per run.

``innerdist train CONFIG.yaml`` reads everything it needs from one file, checked by the
pydantic models below before any work starts. Unknown keys and wrong types are errors that
name the key path (``training.batch_size: Input should be a valid integer``). Lengths are in
voxels where the name or docstring says so (``input_shape``) and in world units (nm)
otherwise (``scale_factor``, ``min_size``). A minimal 3-D config::

    data:
      train:
        - raw: train.zarr/raw
          labels: [train.zarr/labels]     # one instance dataset per channel
      validate:
        - raw: validate.zarr/raw
          labels: [validate.zarr/labels]
    task:
      channels: [organelle]
      scale_factor: 50                    # nm
    model:
      input_shape: [20, 92, 92]           # voxels
      downsample_factors: [[1, 2, 2], [1, 2, 2]]
    training:
      iterations: 2000

Relative dataset paths are resolved against the directory of the config file, so a config
can sit next to its data. :func:`save_config` writes the resolved (absolute) paths, and
:func:`load_config` reads that back to an equal object.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from innerdist.augment import AugmentConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "NormalizationConfig",
    "OptimizerConfig",
    "RoiConfig",
    "ScheduleConfig",
    "SourceConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainingConfig",
    "ValidationConfig",
    "criterion_direction",
    "criterion_iou_threshold",
    "criterion_iou_thresholds",
    "load_config",
    "save_config",
]


class _Strict(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A configuration that does not validate; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        more = f" (and {len(problems) - 1} more below)" if len(problems) > 1 else ""
        lines = [f"invalid config {source}: {problems[0]}{more}", *problems[1:]]
        super().__init__("\n".join(lines))


def _problems(error: ValidationError) -> list[str]:
    """One readable line per pydantic error: ``key.path: message (got value)``."""
    lines = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"])
        message = e["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            message = "unknown key (not a setting of this section)"
        elif e["type"] not in ("missing", "value_error") and not isinstance(
            e.get("input"), dict
        ):
            got = repr(e["input"])
            message += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
        # Cross-section checks (top level) name their keys in the message itself.
        lines.append(f"{where}: {message}" if e["loc"] else message)
    return lines


# --- data -------------------------------------------------------------------------------


class RoiConfig(_Strict):
    """A region in world units (nm): ``begin`` (inclusive) and ``end`` (exclusive) per
    spatial axis, z, y, x order, e.g. ``{begin: [0, 0], end: [2560, 5120]}``."""

    begin: list[int] = Field(min_length=2, max_length=3)
    end: list[int] = Field(min_length=2, max_length=3)

    @model_validator(mode="after")
    def _ordered(self) -> RoiConfig:
        if len(self.begin) != len(self.end):
            raise ValueError(
                f"begin {self.begin} and end {self.end} must have one entry per axis each"
            )
        if not all(e > b for b, e in zip(self.begin, self.end, strict=True)):
            raise ValueError(
                f"end {self.end} must be greater than begin {self.begin} on every axis"
            )
        return self

    def to_roi(self) -> Any:
        """The :class:`funlib.geometry.Roi` (offset = begin, shape = end - begin)."""
        from funlib.geometry import Coordinate, Roi

        return Roi(Coordinate(self.begin), Coordinate(self.end) - Coordinate(self.begin))


class SourceConfig(_Strict):
    """One volume to train or validate on.

    ``labels`` is either a list of instance-label datasets, one per channel of
    ``task.channels`` (in that order), or a single semantic-label dataset together with
    ``classes``, which maps every channel name to the class ids that make up its objects
    (each connected region of those ids is then one object). ``mask`` (optional, 0 = do
    not use the voxel) restricts where crops are taken and which voxels count in the loss
    and in validation. ``weight`` is the relative probability of sampling from this volume.
    ``roi`` (optional, world units, see :class:`RoiConfig`) uses only that region, as if
    the volume were cut to it (raw, labels and mask alike), so train, validation and test
    regions of one volume need no copies; it must lie inside the data and on the voxel
    grid of raw and labels.
    """

    raw: str
    labels: list[str] | str
    classes: dict[str, list[int]] | None = None
    mask: str | None = None
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    roi: RoiConfig | None = None

    @model_validator(mode="after")
    def _labels_form(self) -> SourceConfig:
        if self.classes is None:
            if isinstance(self.labels, str):
                # One instance dataset for one channel, written without the list.
                self.labels = [self.labels]
            if not self.labels:
                raise ValueError("labels must name at least one dataset")
        else:
            if isinstance(self.labels, list):
                if len(self.labels) != 1:
                    raise ValueError(
                        "with classes, labels must be a single semantic-label dataset, got "
                        f"{len(self.labels)} datasets"
                    )
                self.labels = self.labels[0]
            for name, ids in self.classes.items():
                if not ids or any(i <= 0 for i in ids):
                    raise ValueError(
                        f"classes[{name!r}] must list positive class ids (0 is background), "
                        f"got {ids}"
                    )
        return self

    @property
    def label_datasets(self) -> list[str]:
        """The label dataset paths (one per channel, or the one semantic dataset)."""
        return [self.labels] if isinstance(self.labels, str) else list(self.labels)

    def _resolved(self, base: Path) -> SourceConfig:
        def resolve(p: str) -> str:
            return p if Path(p).is_absolute() else str((base / p).resolve())

        labels: list[str] | str = (
            resolve(self.labels)
            if isinstance(self.labels, str)
            else [resolve(p) for p in self.labels]
        )
        return self.model_copy(
            update={
                "raw": resolve(self.raw),
                "labels": labels,
                "mask": None if self.mask is None else resolve(self.mask),
            }
        )


class DataConfig(_Strict):
    """Training volumes (at least one) and validation volumes (may be empty: then no
    validation runs and no best checkpoint is chosen)."""

    train: list[SourceConfig] = Field(min_length=1)
    validate_: list[SourceConfig] = Field(default_factory=list, alias="validate")

    # "validate" is a BaseModel method name, hence the alias.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- task and model ---------------------------------------------------------------------


class TaskConfig(_Strict):
    """What to predict: one tanh-normalised inner-distance channel per entry of
    ``channels`` (see ``InnerDistancePredictor``). ``scale_factor`` is the tanh scale in
    world units (nm); ``epsilon`` and ``threshold`` are the predictor's saturation
    tolerance and typical seed level."""

    channels: list[str] = Field(min_length=1)
    scale_factor: float = Field(gt=0, allow_inf_nan=False)
    epsilon: float = Field(default=0.05, gt=0, lt=1)
    threshold: float = Field(default=0.8, gt=0, lt=1)

    @field_validator("channels")
    @classmethod
    def _unique(cls, channels: list[str]) -> list[str]:
        if len(set(channels)) != len(channels):
            raise ValueError(f"channel names must be unique, got {channels}")
        return channels


class ModelConfig(_Strict):
    """U-Net settings (see ``innerdist.architecture.UNet`` for each one's meaning).

    ``input_shape`` is the training input in voxels (2 entries for 2-D, 3 for 3-D) and must
    be valid for the network; the error says the nearest valid shape otherwise.
    """

    input_shape: list[int] = Field(min_length=2, max_length=3)
    num_in_channels: int = Field(default=1, ge=1)
    num_fmaps: int = Field(default=12, ge=1)
    num_fmaps_out: int | None = Field(default=None, ge=1)
    fmap_inc_factor: int = Field(default=2, ge=1)
    downsample_factors: list[list[int]] | None = None
    kernel_size_down: list[list[int | list[int]]] | None = None
    kernel_size_up: list[list[int | list[int]]] | None = None
    padding: Literal["valid", "same"] = "valid"
    activation: str = "ReLU"
    upsample: Literal["transposed", "nearest"] = "transposed"
    batch_norm: bool = False
    eval_shape_increase: list[int] | None = None

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        # The UNet constructor owns the shape rules; its ValueError/TypeError becomes a
        # validation error of the "model" section.
        try:
            self.unet()
        except TypeError as e:
            raise ValueError(str(e)) from None
        return self

    def unet(self) -> Any:
        """The :class:`~innerdist.architecture.UNet` these settings describe."""
        from innerdist.architecture import UNet

        return UNet(**self.model_dump())


# --- training ---------------------------------------------------------------------------


class OptimizerConfig(_Strict):
    """``adam`` / ``adamw`` (decoupled weight decay) / ``sgd`` (with ``momentum``)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(betas)}")
        return betas


class ScheduleConfig(_Strict):
    """Learning-rate schedule, as a factor on ``optimizer.lr`` per iteration.

    ``warmup`` iterations ramp the factor linearly from ``1 / warmup`` to 1; then
    ``constant`` keeps 1, ``cosine`` decays to ``min_factor`` at the last iteration, and
    ``step`` multiplies by ``gamma`` every ``step_size`` iterations.
    """

    name: Literal["constant", "cosine", "step"] = "constant"
    warmup: int = Field(default=0, ge=0)
    min_factor: float = Field(default=0.0, ge=0, le=1)
    step_size: int = Field(default=1000, ge=1)
    gamma: float = Field(default=0.5, gt=0, le=1)


class NormalizationConfig(_Strict):
    """Raw intensities map linearly so that ``min -> 0`` and ``max -> 1``:
    ``(raw - min) / (max - min)`` (values outside are not clipped); the rules are those of
    :func:`innerdist.normalize.check_normalization`."""

    min: float = Field(allow_inf_nan=False)
    max: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> NormalizationConfig:
        from innerdist.normalize import check_normalization

        check_normalization(self.model_dump(), require_dtype=False)
        return self


class TrainingConfig(_Strict):
    """How to train. Intervals are in iterations (optimizer steps); 0 disables snapshots.

    ``max_minutes`` (optional) is a time budget: training stops at the first iteration
    that ends past it, after writing a checkpoint and (with validation data) validating
    it, so the best checkpoint knows the last state; running again resumes. ``iterations``
    stays the plan (it shapes a cosine schedule) and the upper limit.

    ``normalization`` left out means: the data's own range, the 1 and 99.8 percentiles of
    the training intensities (sampled), stored in the checkpoint and used by validation and
    ``predict`` alike (see :mod:`innerdist.normalize`). ``device: auto`` picks ``cuda``
    when available. ``amp`` (mixed precision) is used on CUDA only and ignored on the CPU.
    ``max_grad_norm`` clips the gradients' total norm (of the unscaled gradients under fp16
    AMP). ``num_workers`` data-loader processes do not change the sample stream: sample ``i`` is
    always drawn from ``seed`` and ``i``.
    """

    iterations: int = Field(ge=1)
    max_minutes: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    batch_size: int = Field(default=1, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig.model_validate({}))
    num_workers: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    validation_interval: int = Field(default=1000, ge=1)
    checkpoint_interval: int = Field(default=1000, ge=1)
    keep_last: int = Field(default=3, ge=1)
    snapshot_interval: int = Field(default=0, ge=0)
    min_foreground_fraction: float = Field(default=0.0, ge=0, le=1)
    normalization: NormalizationConfig | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    max_grad_norm: float | None = Field(default=None, gt=0)


# --- validation -------------------------------------------------------------------------

# Score names as ``innerdist.evaluate.write_scores`` writes them in its CSV; the first
# group is better when higher, the second when lower.
_HIGHER = {
    "instances.mean_matched_iou",
    "instances.segmentation_quality",
    "instances.recognition_quality",
    "instances.panoptic_quality",
    "instances.rand_precision",
    "instances.rand_recall",
    "binary.dice",
    "binary.jaccard",
    "binary.precision",
    "binary.recall",
    "binary.f1_score",
    "binary.precision_with_tolerance",
    "binary.recall_with_tolerance",
    "binary.f1_score_with_tolerance",
}
_LOWER = {
    "instances.voi",
    "instances.voi_split",
    "instances.voi_merge",
    "instances.adapted_rand_error",
    "binary.voi",
    "binary.false_positive_rate",
    "binary.false_negative_rate",
    "binary.hausdorff_distance",
    "binary.mean_false_distance",
    "binary.mean_false_distance_clipped",
}
_MATCHING = re.compile(
    r"^instances\.(precision|recall|f1_score|accuracy|mean_matched_iou|panoptic_quality)"
    r"@(\d*\.?\d+)(?::(\d*\.?\d+))?$"
)
#: Step of an IoU range criterion: ``@0.5:0.9`` averages over 0.5, 0.55, ..., 0.9.
IOU_RANGE_STEP = 0.05


def criterion_iou_thresholds(name: str) -> tuple[float, ...]:
    """The IoU thresholds a matching criterion averages over; ``()`` for other criteria.

    ``@t`` is one threshold; ``@a:b`` every threshold from ``a`` to ``b`` in steps of 0.05
    (as COCO's AP@[.5:.95]), rounded to 4 decimals.

    >>> criterion_iou_thresholds("instances.f1_score@0.5:0.7")
    (0.5, 0.55, 0.6, 0.65, 0.7)
    >>> criterion_iou_thresholds("binary.dice")
    ()
    """
    m = _MATCHING.match(name)
    if not m:
        return ()
    low = float(m.group(2))
    if m.group(3) is None:
        return (low,)
    high = float(m.group(3))
    count = round((high - low) / IOU_RANGE_STEP)
    if high < low or not math.isclose(low + count * IOU_RANGE_STEP, high, abs_tol=1e-9):
        raise ValueError(
            f"criterion {name!r}: an IoU range a:b needs a <= b and b - a a multiple of "
            f"{IOU_RANGE_STEP}"
        )
    return tuple(round(low + i * IOU_RANGE_STEP, 4) for i in range(count + 1))


def criterion_iou_threshold(name: str) -> float | None:
    """The IoU threshold of a single-threshold matching criterion
    (``instances.f1_score@0.5`` -> 0.5); ``None`` for ranges and other criteria."""
    m = _MATCHING.match(name)
    return float(m.group(2)) if m and m.group(3) is None else None


def criterion_direction(name: str) -> Literal["max", "min"]:
    """Whether a validation criterion is better when larger (``max``) or smaller.

    Criteria are score names as in ``innerdist evaluate``'s CSV: ``binary.<score>`` (on
    the thresholded foreground) or ``instances.<score>``, with ``@<IoU threshold>`` for
    the matching scores (a pair matches when ``IoU >= t``) or ``@<a>:<b>`` for their mean
    over the thresholds ``a, a + 0.05, ..., b``, e.g. ``instances.f1_score@0.5``,
    ``instances.f1_score@0.5:0.9``, ``binary.dice``, ``instances.adapted_rand_error``.

    >>> criterion_direction("instances.f1_score@0.5"), criterion_direction("instances.voi")
    ('max', 'min')
    """
    thresholds = criterion_iou_thresholds(name)
    if thresholds:
        if not all(0 < t <= 1 for t in thresholds):
            raise ValueError(f"criterion {name!r}: IoU thresholds must lie in (0, 1]")
        return "max"
    if name in _HIGHER:
        return "max"
    if name in _LOWER:
        return "min"
    raise ValueError(
        f"unknown validation criterion {name!r}; expected instances.<precision|recall|"
        f"f1_score|accuracy|mean_matched_iou|panoptic_quality>@<IoU> (or @<a>:<b>, a range), "
        f"or one of {sorted(_HIGHER | _LOWER)}"
    )


class ValidationConfig(_Strict):
    """Post-processing sweep and model selection on the validation volumes.

    Every pair ``foreground_level < seed_level`` from the two lists is tried, with every
    ``min_size`` and every ``seed_dynamics`` value: instances are seeded where the
    prediction exceeds the seed level, or (seed dynamic > 0, world units) at every maximum
    of the inner distance rising that far above its saddles, and grown within the
    foreground level; objects smaller than ``min_size`` (world units:
    nm^3 in 3-D, nm^2 in 2-D; one number, or a list to sweep) are dropped. ``binary.*``
    criteria score the thresholded foreground (``pred > foreground_level``). Each
    criterion is averaged over channels and validation volumes; the first criterion picks
    ``best.pt`` and steers the refinement.

    The lists are a starting grid, not the only values tried: ``refine`` rounds then try,
    around the best point so far, the midpoints to its neighbours on each swept axis (one
    step beyond the grid's edge when the best sits there), so a few grid values reach a
    resolution of a quarter step or better. A best value on the edge of the configured
    grid is warned about (extend the grid).

    Selection is made robust to a small validation set: with ``smooth_levels`` each point
    scores a 1-2-1 weighted mean of its lower neighbour, itself and its upper neighbour on
    each swept axis (a lone noisy maximum loses to a broad plateau), and the checkpoint is
    chosen by the mean of that score over the last ``smooth_checkpoints`` validations (1:
    no smoothing; trailing, so the choice never moves to an older checkpoint whose weights
    may be pruned).

    The default criterion ``instances.f1_score@0.5:0.9`` (instance F1 averaged over IoU
    thresholds 0.5, 0.55, ..., 0.9) rewards boundaries as well as detection: objects that
    are found but too small or too large lose the high thresholds. Criteria lists written
    for earlier versions (``instances.f1_score@0.5`` etc.) keep working.
    """

    foreground_levels: list[float] = Field(default=[0.05, 0.1, 0.2], min_length=1)
    #: With dynamic seeds (the default) the seed level caps the relief, so high levels are
    #: where the best lies: the demo and bench/quality.py both picked 0.9-0.95 at the top
    #: of the earlier [0.4, 0.6, 0.8], with an edge warning at every validation.
    seed_levels: list[float] = Field(default=[0.6, 0.8, 0.9, 0.95], min_length=1)
    #: Minimum dynamics of the seeds to sweep, world units (0: level seeds only); default
    #: one voxel of the finest axis (see :mod:`innerdist.watershed`).
    seed_dynamics: list[float] | None = Field(default=None, min_length=1)
    min_size: float | list[float] = Field(default=0.0)
    criteria: list[str] = Field(default=["instances.f1_score@0.5:0.9"], min_length=1)
    refine: int = Field(default=3, ge=0)
    smooth_levels: bool = True
    smooth_checkpoints: int = Field(default=2, ge=1)

    @field_validator("min_size")
    @classmethod
    def _min_sizes(cls, value: float | list[float]) -> float | list[float]:
        sizes = value if isinstance(value, list) else [value]
        if not sizes or not all(math.isfinite(v) and v >= 0 for v in sizes):
            raise ValueError(
                f"min_size must be a number >= 0 (world units) or a non-empty list of them, "
                f"got {value}"
            )
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"min_size values must be distinct, got {value}")
        return value

    @field_validator("seed_dynamics")
    @classmethod
    def _dynamics(cls, values: list[float] | None) -> list[float] | None:
        if values is None:
            return None
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(
                f"seed_dynamics must be numbers >= 0 (world units, 0: level seeds), got {values}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"seed_dynamics must be distinct, got {values}")
        return values

    @field_validator("foreground_levels", "seed_levels")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        if not all(0 <= v < 1 for v in levels):
            raise ValueError(f"levels must lie in [0, 1) (the prediction's range), got {levels}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct, got {levels}")
        return levels

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, criteria: list[str]) -> list[str]:
        for c in criteria:
            criterion_direction(c)
        if len(set(criteria)) != len(criteria):
            raise ValueError(f"criteria must be distinct, got {criteria}")
        return criteria

    @model_validator(mode="after")
    def _pairs(self) -> ValidationConfig:
        if not self.level_pairs():
            raise ValueError(
                f"no foreground level is below a seed level: foreground_levels "
                f"{self.foreground_levels}, seed_levels {self.seed_levels}"
            )
        return self

    def level_pairs(self) -> list[tuple[float, float]]:
        """The swept ``(foreground_level, seed_level)`` pairs, in sweep order."""
        return [
            (f, s) for f in self.foreground_levels for s in self.seed_levels if f < s
        ]

    def seed_dynamics_for(self, voxel_size: Sequence[float]) -> list[float]:
        """The swept seed dynamics (world units): ``seed_dynamics``, or one voxel of the
        finest axis of ``voxel_size``."""
        if self.seed_dynamics is not None:
            return list(self.seed_dynamics)
        return [float(min(voxel_size))]

    @property
    def min_sizes(self) -> list[float]:
        """The swept ``min_size`` values (world units), in sweep order."""
        return list(self.min_size) if isinstance(self.min_size, list) else [self.min_size]

    def sweep(self, voxel_size: Sequence[float] | None = None) -> dict[str, list[float]]:
        """The starting grid: each swept post-processing parameter and its values, in
        sweep order (the keys are the columns of ``validation.csv``). The seed dynamics
        are :meth:`seed_dynamics_for` ``voxel_size``; without a voxel size (no tanh scale
        known to turn predictions into distances) level seeds only (``[0.0]``)."""
        return {
            "foreground_level": list(self.foreground_levels),
            "seed_level": list(self.seed_levels),
            "min_size": self.min_sizes,
            "seed_dynamic": [0.0] if voxel_size is None else self.seed_dynamics_for(voxel_size),
        }


# --- the whole file ---------------------------------------------------------------------


class TrainConfig(_Strict):
    """Everything ``innerdist train`` needs (sections: data, task, model, training,
    validation)."""

    data: DataConfig
    task: TaskConfig
    model: ModelConfig
    training: TrainingConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        channels = self.task.channels
        for split, sources in (("train", self.data.train), ("validate", self.data.validate_)):
            for i, source in enumerate(sources):
                where = f"data.{split}.{i}"
                if source.classes is None:
                    if len(source.label_datasets) != len(channels):
                        raise ValueError(
                            f"{where}.labels: {len(source.label_datasets)} label dataset(s) "
                            f"for {len(channels)} channel(s) {channels}; give one instance "
                            "dataset per channel, or one semantic dataset with classes"
                        )
                elif sorted(source.classes) != sorted(channels):
                    raise ValueError(
                        f"{where}.classes: names {sorted(source.classes)} must be the "
                        f"channels {channels}"
                    )
                if source.roi is not None and len(source.roi.begin) != self.dims:
                    raise ValueError(
                        f"{where}.roi: {len(source.roi.begin)} axes, but model.input_shape "
                        f"has {self.dims}"
                    )
        return self

    @property
    def dims(self) -> int:
        """Number of spatial axes of the model (2 or 3)."""
        return len(self.model.input_shape)

    def resolve_paths(self, base: str | Path) -> TrainConfig:
        """A copy with every relative dataset path made absolute against ``base``."""
        base = Path(base)
        data = DataConfig(
            train=[s._resolved(base) for s in self.data.train],
            validate=[s._resolved(base) for s in self.data.validate_],
        )
        return self.model_copy(update={"data": data})

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types, keys as written in the file (``data.validate``)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> TrainConfig:
        """Validate ``data``; a :class:`ConfigError` lists every problem with its key."""
        if not isinstance(data, dict):
            raise ConfigError(
                source, [f"expected a mapping of sections, got {type(data).__name__}"]
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(source, _problems(e)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config; relative paths are resolved against the
    directory of the file.

    Raises :class:`FileNotFoundError` for a missing file and :class:`ConfigError` (a
    ``ValueError``) for YAML syntax errors and invalid settings.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no config file at {str(path)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(repr(str(path)), [f"{where}YAML syntax error: {problem}"]) from None
    config = TrainConfig.from_dict(data, repr(str(path)))
    return config.resolve_paths(p.parent.resolve())


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (atomically: a temporary file then a rename)."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
