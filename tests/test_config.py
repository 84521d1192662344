"""The training config: strict validation with key paths, path resolution, YAML round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from funlib.geometry import Roi

from innerdist.augment import AugmentConfig
from innerdist.config import (
    ConfigError,
    TrainConfig,
    ValidationConfig,
    criterion_direction,
    criterion_iou_threshold,
    load_config,
    save_config,
)


def minimal() -> dict[str, Any]:
    return {
        "data": {
            "train": [{"raw": "train.zarr/raw", "labels": ["train.zarr/labels"]}],
            "validate": [{"raw": "validate.zarr/raw", "labels": "validate.zarr/labels"}],
        },
        "task": {"channels": ["organelle"], "scale_factor": 50},
        "model": {"input_shape": [44, 44], "num_fmaps": 4, "downsample_factors": [[2, 2]]},
        "training": {"iterations": 10},
    }


def write(tmp_path: Path, data: Any, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data, "test.yaml")
    assert str(info.value).startswith("invalid config test.yaml: ")
    return info.value.problems


def test_defaults_and_types() -> None:
    config = TrainConfig.from_dict(minimal())
    assert config.dims == 2
    assert config.training.batch_size == 1
    assert config.training.optimizer.name == "adam"
    assert config.training.augment == AugmentConfig()
    assert config.validation.criteria == ["instances.f1_score@0.5:0.9"]
    # A single label dataset without a list is one channel.
    assert config.data.validate_[0].labels == ["validate.zarr/labels"]
    assert config.model.unet().input_shape == (44, 44)


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    data = minimal()
    data["data"]["train"][0]["mask"] = "masks.zarr/mask"
    data["data"]["train"].append({"raw": "/abs/a.zarr/raw", "labels": ["/abs/a.zarr/gt"]})
    (tmp_path / "sub").mkdir()
    config = load_config(write(tmp_path / "sub", data))
    first = config.data.train[0]
    assert first.raw == str(tmp_path / "sub" / "train.zarr" / "raw")
    assert first.labels == [str(tmp_path / "sub" / "train.zarr" / "labels")]
    assert first.mask == str(tmp_path / "sub" / "masks.zarr" / "mask")
    assert config.data.train[1].raw == "/abs/a.zarr/raw"
    assert config.data.validate_[0].labels == [str(tmp_path / "sub" / "validate.zarr/labels")]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    data = minimal()
    data["training"].update(
        {
            "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup": 5},
            "normalization": {"min": 10, "max": 200},
            "max_minutes": 2.5,
            "augment": {"flip": False, "elastic": {"enabled": True}},
        }
    )
    data["validation"] = {"criteria": ["binary.dice", "instances.adapted_rand_error"]}
    data["data"]["train"][0] = {
        "raw": "s.zarr/raw",
        "labels": "s.zarr/classes",
        "classes": {"organelle": [1, 3]},
        "weight": 2.5,
        "roi": {"begin": [40, 0], "end": [400, 800]},
    }
    config = load_config(write(tmp_path, data))
    saved = save_config(config, tmp_path / "out" / "config.yaml")
    again = load_config(saved)
    assert again == config
    assert again.data.train[0].labels == str(tmp_path / "s.zarr" / "classes")
    assert again.data.train[0].classes == {"organelle": [1, 3]}
    roi = again.data.train[0].roi
    assert roi is not None and roi.to_roi() == Roi((40, 0), (360, 800))
    assert again.training.max_minutes == 2.5
    # The file uses the key names of the YAML schema ("validate", not "validate_").
    assert "validate" in yaml.safe_load(saved.read_text())["data"]
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left


def test_unknown_keys_are_named_with_their_path() -> None:
    data = minimal()
    data["trainig"] = {}
    data["training"]["batch_sise"] = 2
    data["training"]["augment"] = {"flop": True}
    data["data"]["train"][0]["rwa"] = "x"
    found = problems(data)
    assert "trainig: unknown key (not a setting of this section)" in found
    assert "training.batch_sise: unknown key (not a setting of this section)" in found
    assert "training.augment.flop: unknown key (not a setting of this section)" in found
    assert "data.train.0.rwa: unknown key (not a setting of this section)" in found


def test_wrong_types_name_the_key_and_the_value() -> None:
    data = minimal()
    data["training"]["batch_size"] = "a"
    data["task"]["channels"] = "organelle"
    found = problems(data)
    assert any(
        p.startswith("training.batch_size: Input should be a valid integer") and "(got 'a')" in p
        for p in found
    ), found
    assert any(p.startswith("task.channels: Input should be a valid list") for p in found)


def test_first_line_counts_further_problems() -> None:
    data = minimal()
    data["training"]["batch_size"] = 0
    data["training"]["keep_last"] = 0
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data, "x.yaml")
    lines = str(info.value).splitlines()
    assert lines[0].endswith("(and 1 more below)")
    assert len(lines) == 2


def test_missing_section() -> None:
    data = minimal()
    del data["task"]
    assert problems(data) == ["task: Field required"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["training"].update(batch_size=0), "training.batch_size: Input should be"),
        (lambda d: d["training"].update(iterations=-5), "training.iterations: Input should be"),
        (lambda d: d["task"].update(scale_factor=-1), "task.scale_factor: Input should be"),
        (lambda d: d["task"].update(channels=["a", "a"]), "task.channels: channel names must"),
        (
            lambda d: d["model"].update(input_shape=[45, 44]),
            "model: input_shape (45, 44) (voxels) is not valid",
        ),
        (lambda d: d["model"].update(padding="reflect"), "model.padding: Input should be"),
        (lambda d: d["model"].update(activation="Softmax"), "model: activation must be one of"),
        (
            lambda d: d["training"].update(normalization={"min": 5, "max": 5}),
            "training.normalization: normalization needs min < max, got min=5.0, max=5.0",
        ),
        (
            lambda d: d["training"].update(optimizer={"name": "lbfgs"}),
            "training.optimizer.name: Input should be",
        ),
        (
            lambda d: d["training"].update(optimizer={"betas": [0.9, 1.5]}),
            "training.optimizer.betas: betas must lie in [0, 1)",
        ),
        (lambda d: d["training"].update(device="tpu"), "training.device: Input should be"),
        (
            lambda d: d.update(validation={"criteria": ["instances.f2@0.5"]}),
            "validation.criteria: unknown validation criterion 'instances.f2@0.5'",
        ),
        (
            lambda d: d.update(validation={"criteria": ["instances.f1_score@1.5"]}),
            "validation.criteria: criterion 'instances.f1_score@1.5': IoU thresholds must lie",
        ),
        (
            lambda d: d.update(validation={"criteria": ["binary.dice", "binary.dice"]}),
            "validation.criteria: criteria must be distinct",
        ),
        (
            lambda d: d.update(validation={"seed_levels": [1.2]}),
            "validation.seed_levels: levels must lie in [0, 1)",
        ),
        (
            lambda d: d.update(validation={"foreground_levels": [0.5], "seed_levels": [0.4]}),
            "validation: no foreground level is below a seed level",
        ),
        (
            lambda d: d.update(validation={"min_size": -1}),
            "validation.min_size: min_size must be a number >= 0",
        ),
        (
            lambda d: d.update(validation={"min_size": [0, 5, 5]}),
            "validation.min_size: min_size values must be distinct",
        ),
        (
            lambda d: d.update(validation={"min_size": []}),
            "validation.min_size: min_size must be a number >= 0 (world units) or a non-empty",
        ),
        (
            lambda d: d["data"]["train"][0].update(labels=["a.zarr/l", "b.zarr/l"]),
            "data.train.0.labels: 2 label dataset(s) for 1 channel(s)",
        ),
        (
            lambda d: d["data"]["train"][0].update(
                labels=["a.zarr/l", "b.zarr/l"], classes={"organelle": [1]}
            ),
            "data.train.0: with classes, labels must be a single semantic-label dataset",
        ),
        (
            lambda d: d["data"]["train"][0].update(classes={"mito": [1]}),
            "data.train.0.classes: names ['mito'] must be the channels ['organelle']",
        ),
        (
            lambda d: d["data"]["train"][0].update(classes={"organelle": [0, 2]}),
            "data.train.0: classes['organelle'] must list positive class ids",
        ),
        (
            lambda d: d["data"]["train"][0].update(weight=0),
            "data.train.0.weight: Input should be greater than 0",
        ),
        (lambda d: d["data"].update(train=[]), "data.train: List should have at least 1"),
        (
            lambda d: d["data"]["train"][0].update(roi={"begin": [0, 0], "end": [80, 0]}),
            "data.train.0.roi: end [80, 0] must be greater than begin [0, 0] on every axis",
        ),
        (
            lambda d: d["data"]["train"][0].update(roi={"begin": [0, 0], "end": [8, 8, 8]}),
            "data.train.0.roi: begin [0, 0] and end [8, 8, 8] must have one entry per axis",
        ),
        (
            lambda d: d["data"]["validate"][0].update(roi={"begin": [0, 0, 0], "end": [8, 8, 8]}),
            "data.validate.0.roi: 3 axes, but model.input_shape has 2",
        ),
        (
            lambda d: d["data"]["train"][0].update(roi={"begin": [0, 0], "end": [0.5, 8]}),
            "data.train.0.roi.end.0: Input should be a valid integer",
        ),
        (
            lambda d: d["training"].update(max_minutes=0),
            "training.max_minutes: Input should be greater than 0",
        ),
        (
            lambda d: d.update(validation={"seed_dynamics": [8, -1]}),
            "validation.seed_dynamics: seed_dynamics must be numbers >= 0",
        ),
        (
            lambda d: d.update(validation={"seed_dynamics": [8, 8]}),
            "validation.seed_dynamics: seed_dynamics must be distinct",
        ),
    ],
)
def test_bad_values_name_the_key(change: Any, expected: str) -> None:
    data = minimal()
    change(data)
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config file at"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*line \d+: YAML syntax error"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_config(listed)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        save_config({"a": 1}, tmp_path / "x.yaml")  # type: ignore[arg-type]


def test_criteria() -> None:
    assert criterion_direction("instances.f1_score@0.5") == "max"
    assert criterion_direction("instances.accuracy@.75") == "max"
    assert criterion_iou_threshold("instances.accuracy@.75") == 0.75
    assert criterion_iou_threshold("binary.dice") is None
    assert criterion_direction("binary.dice") == "max"
    assert criterion_direction("instances.adapted_rand_error") == "min"
    assert criterion_direction("binary.hausdorff_distance") == "min"
    with pytest.raises(ValueError, match="unknown validation criterion 'dice'"):
        criterion_direction("dice")


def test_level_pairs_keep_sweep_order_and_skip_impossible_pairs() -> None:
    v = ValidationConfig(foreground_levels=[0.1, 0.5], seed_levels=[0.3, 0.7])
    assert v.level_pairs() == [(0.1, 0.3), (0.1, 0.7), (0.5, 0.7)]
    assert v.min_sizes == [0.0]
    assert ValidationConfig(min_size=[0, 1e6]).min_sizes == [0.0, 1e6]


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parent.parent / "examples").glob("*.yaml")), ids=str
)
def test_example_configs_validate(example: Path) -> None:
    config = load_config(example)
    assert config.data.train[0].raw.startswith(str(example.parent.resolve()))
    unet = config.model.unet()
    assert unet.output_shape(unet.input_shape)  # a valid network input
