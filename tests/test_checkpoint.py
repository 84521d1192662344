"""Tests for innerdist.checkpoint: round trips, atomic saves, safe loading, validation."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import nets
import numpy as np
import pytest
import torch

from innerdist.architecture import UNet
from innerdist.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    random_checkpoint,
    save_checkpoint,
)
from innerdist.inner_distance import InnerDistancePredictor

NORM = nets.NORM_UINT8
POST = {"foreground_level": 0.1, "seed_level": 0.6, "min_size": 20}


tiny_unet = partial(nets.tiny_unet, 2, input_shape=(20, 20))


def predictor() -> InnerDistancePredictor:
    return InnerDistancePredictor(["mito", "er"], 40.0, epsilon=0.1, threshold=0.7)


def checkpoint(**kwargs: Any) -> Checkpoint:
    ckpt = random_checkpoint(tiny_unet(), predictor(), (8, 8), NORM, seed=3)
    for key, value in kwargs.items():
        setattr(ckpt, key, value)
    ckpt.__post_init__()
    return ckpt


def raw_dict(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = torch.load(path, weights_only=True)
    return data


# --- round trips -------------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    state: dict[str, Any] = {
        "optimizer": torch.optim.Adam(torch.nn.Linear(2, 2).parameters()).state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": [3, [1, 2, 3], None],
    }
    ckpt = checkpoint(iteration=1200, postprocessing=POST, training_state=state)
    path = save_checkpoint(tmp_path / "model.pt", ckpt)
    loaded = load_checkpoint(path)

    assert loaded.architecture == ckpt.architecture
    assert loaded.predictor.to_dict() == ckpt.predictor.to_dict()
    assert loaded.voxel_size == (8, 8)
    assert loaded.normalization == {"min": 0.0, "max": 255.0, "dtype": "uint8"}
    assert loaded.iteration == 1200
    assert loaded.postprocessing == {"foreground_level": 0.1, "seed_level": 0.6, "min_size": 20}
    # the minimum seed dynamic (world units) is kept when given; older checkpoints lack it
    dynamic = checkpoint(iteration=3, postprocessing={**POST, "seed_dynamic": 8})
    again = load_checkpoint(save_checkpoint(tmp_path / "dynamic.pt", dynamic))
    assert again.postprocessing == {**POST, "seed_dynamic": 8.0}
    assert set(loaded.weights) == set(ckpt.weights)
    for name, tensor in ckpt.weights.items():
        assert torch.equal(loaded.weights[name], tensor)
    assert loaded.training_state is not None
    assert torch.equal(loaded.training_state["torch_rng"], state["torch_rng"])
    assert loaded.training_state["python_rng"] == [3, [1, 2, 3], None]
    assert loaded.weights_hash() == ckpt.weights_hash()

    on_disk = raw_dict(path)
    assert on_disk["format"] == "innerdist-checkpoint"
    assert on_disk["format_version"] == FORMAT_VERSION
    assert on_disk["architecture"]["type"] == "UNet"
    assert on_disk["predictor"]["type"] == "InnerDistancePredictor"


def test_build_model_reproduces_the_saved_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = predictor().create_model(tiny_unet())
    with torch.no_grad():  # make the biases non-zero too, so that they are checked
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ckpt = Checkpoint.from_model(model, predictor(), voxel_size=(4, 4), normalization=NORM)
    rebuilt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", ckpt)).build_model()

    assert not rebuilt.training
    x = torch.randn(1, 1, 20, 20)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_from_model_copies_weights_so_training_can_continue() -> None:
    model = predictor().create_model(tiny_unet())
    ckpt = Checkpoint.from_model(model, predictor(), voxel_size=(4, 4), normalization=NORM)
    before = {k: v.clone() for k, v in ckpt.weights.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(ckpt.weights[k], v) for k, v in before.items())


def test_loading_needs_no_training_state(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", checkpoint())
    data = raw_dict(path)
    del data["training_state"], data["postprocessing"]
    torch.save(data, path)
    loaded = load_checkpoint(path)
    assert loaded.training_state is None and loaded.postprocessing is None


def test_random_checkpoint_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = random_checkpoint(tiny_unet(), predictor(), (8, 8), NORM, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = random_checkpoint(tiny_unet(), predictor(), (8, 8), NORM, seed=5)
    c = random_checkpoint(tiny_unet(), predictor(), (8, 8), NORM, seed=6)
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()
    assert a.iteration == 0 and a.postprocessing is None


def test_weights_hash_sees_every_value() -> None:
    ckpt = checkpoint()
    before = ckpt.weights_hash()
    name = sorted(ckpt.weights)[-1]
    ckpt.weights[name] = ckpt.weights[name].clone()
    ckpt.weights[name].view(-1)[0] += 1e-6
    assert ckpt.weights_hash() != before


# --- atomic saving -----------------------------------------------------------------------------


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint(iteration=1))
    save_checkpoint(path, checkpoint(iteration=2))
    assert load_checkpoint(path).iteration == 2
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint(iteration=1))

    def broken_save(obj: object, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, checkpoint(iteration=2))
    monkeypatch.undo()
    assert load_checkpoint(path).iteration == 1
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_save_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must be a Checkpoint"):
        save_checkpoint(tmp_path / "m.pt", {"weights": {}})  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "m.pt", checkpoint())
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(tmp_path, checkpoint())


# --- safe loading ------------------------------------------------------------------------------

_RAN: list[str] = []


def _record(what: str) -> str:
    _RAN.append(what)
    return what


class _Payload:
    """Unpickling this calls _record: a stand-in for arbitrary code in a pickle."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record, ("code ran",))


def test_pickled_objects_are_refused_without_running_them(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    data = checkpoint().to_dict()
    data["training_state"] = {"payload": _Payload()}
    torch.save(data, path)
    _RAN.clear()
    with pytest.raises(ValueError, match="refusing to load .*_record.*weights_only=True"):
        load_checkpoint(path)
    assert _RAN == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_junk_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content", [torch.zeros(3), {"weights": {}}, [1, 2], {"format": "something-else"}]
)
def test_torch_files_that_are_not_checkpoints(tmp_path: Path, content: object) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="not an innerdist checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", checkpoint())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="is not a checkpoint"):
        load_checkpoint(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", checkpoint())
    data = raw_dict(path)
    data["format_version"] = 99
    torch.save(data, path)
    with pytest.raises(ValueError, match="format version 99; this innerdist reads versions"):
        load_checkpoint(path)


@pytest.mark.parametrize("key", ["weights", "normalization", "voxel_size", "architecture"])
def test_missing_keys(tmp_path: Path, key: str) -> None:
    path = save_checkpoint(tmp_path / "m.pt", checkpoint())
    data = raw_dict(path)
    del data[key]
    torch.save(data, path)
    with pytest.raises(ValueError, match=f"missing the keys \\['{key}'\\]"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("architecture", {"type": "ResNet"}, "unknown architecture type 'ResNet'"),
        ("architecture", {"input_shape": [20, 20]}, "must be a dict with a 'type' key"),
        ("architecture", {"type": "UNet", "input_shape": [21, 21]}, "invalid architecture"),
        ("predictor", {"type": "InnerDistancePredictor", "channels": []}, "invalid predictor"),
        ("normalization", {"min": 0}, "is invalid: normalization"),
        ("voxel_size", [8, 8, 8], "is invalid: voxel_size"),
    ],
)
def test_invalid_contents(tmp_path: Path, key: str, value: object, message: str) -> None:
    path = save_checkpoint(tmp_path / "m.pt", checkpoint())
    data = raw_dict(path)
    data[key] = value
    torch.save(data, path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    other = random_checkpoint(tiny_unet(num_fmaps=3), predictor(), (8, 8), NORM)
    ckpt = checkpoint(weights=other.weights)
    with pytest.raises(ValueError, match="weights do not fit"):
        ckpt.build_model()


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"architecture": "UNet"}, TypeError, "architecture must be a UNet"),
        ({"predictor": None}, TypeError, "predictor must be an InnerDistancePredictor"),
        ({"weights": {"a": np.zeros(2)}}, TypeError, "weights must be a state_dict"),
        ({"voxel_size": (8, 8, 8)}, ValueError, "has 3 entries but the architecture is 2-D"),
        ({"voxel_size": (8, 0)}, ValueError, "positive whole numbers"),
        ({"voxel_size": (8, 2.5)}, ValueError, "positive whole numbers"),
        ({"voxel_size": "88"}, TypeError, "sequence of 2 integers"),
        ({"iteration": -1}, ValueError, "non-negative integer"),
        ({"iteration": 1.5}, ValueError, "non-negative integer"),
        ({"postprocessing": {"foreground_level": 0.1}}, ValueError, "exactly the keys"),
        ({"postprocessing": [0.1, 0.5, 3]}, TypeError, "postprocessing must be a dict"),
        ({"postprocessing": {**POST, "min_size": -3}}, ValueError, "non-negative integer"),
        ({"postprocessing": {**POST, "seed_level": "high"}}, TypeError, "must be a number"),
        ({"postprocessing": {**POST, "seed_dynamic": -8}}, ValueError, "seed_dynamic"),
        ({"postprocessing": {**POST, "seed_dynamic": True}}, ValueError, "seed_dynamic"),
        ({"postprocessing": {**POST, "seed": 1}}, ValueError, "exactly the keys"),
        ({"training_state": [1]}, TypeError, "training_state must be a dict"),
        ({"training_state": {"rng": np.zeros(3)}}, TypeError, r"training_state\['rng'\] is a "
                                                               "ndarray.*torch.from_numpy"),
        ({"training_state": {"f": {1.5: 2}}}, TypeError, "key 1.5 of type float"),
        ({"training_state": {"f": [object()]}}, TypeError, r"training_state\['f'\]\[0\]"),
    ],
)
def test_checkpoint_validation(changes: dict[str, Any], error: type[Exception],
                               message: str) -> None:
    base = checkpoint()
    fields: dict[str, Any] = {
        "architecture": base.architecture,
        "predictor": base.predictor,
        "weights": base.weights,
        "voxel_size": base.voxel_size,
        "normalization": base.normalization,
    }
    fields.update(changes)
    with pytest.raises(error, match=message):
        Checkpoint(**fields)


def test_from_model_errors() -> None:
    with pytest.raises(TypeError, match="must be an innerdist Model"):
        Checkpoint.from_model(torch.nn.Linear(2, 2), predictor(),  # type: ignore[arg-type]
                              voxel_size=(4, 4), normalization=NORM)


def test_weights_hash_with_batch_norm_scalars() -> None:
    # batch norm keeps a 0-dim num_batches_tracked tensor among the weights
    unet = UNet((20, 20), num_fmaps=2, downsample_factors=[(2, 2)], batch_norm=True)
    a = random_checkpoint(unet, predictor(), (8, 8), NORM, seed=1)
    assert any(t.dim() == 0 for t in a.weights.values())
    before = a.weights_hash()
    name = next(n for n, t in a.weights.items() if t.dim() == 0)
    a.weights[name] = a.weights[name] + 1
    assert a.weights_hash() != before


def test_a_checkpoint_with_the_old_dtype_range_normalisation_predicts_as_before(
    tmp_path: Path,
) -> None:
    # Written before normalisation had a "method": the uint8 range, 0..255.
    from innerdist.normalize import normalize_raw

    path = save_checkpoint(tmp_path / "old.pt", checkpoint())
    data = raw_dict(path)
    assert data["normalization"] == {"min": 0.0, "max": 255.0, "dtype": "uint8"}
    loaded = load_checkpoint(path)
    raw = np.array([[0, 51], [204, 255]], np.uint8)
    np.testing.assert_array_equal(normalize_raw(raw, loaded.normalization),
                                  np.array([[0, 0.2], [0.8, 1]], np.float32))
