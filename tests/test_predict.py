"""Tests for innerdist.predict: normalisation, in-memory prediction against a one-pass
reference, blockwise prediction against in-memory prediction, resuming, errors and the CLI."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from funlib.geometry import Roi
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import NORM_UINT8, tiny_predictor, tiny_unet
from typer.testing import CliRunner

from innerdist.architecture import UNet
from innerdist.checkpoint import Checkpoint, random_checkpoint, save_checkpoint
from innerdist.cli import app
from innerdist.predict import (
    NonFiniteRawError,
    _BlockPredictor,
    _read_reflected,
    _Tiling,
    dequantize,
    normalize_raw,
    parse_roi,
    predict_array,
    predict_volume,
    tta_transforms,
)
from innerdist.volumes import create_volume, is_complete, mark_complete, open_volume

NORM = NORM_UINT8
POST = {"foreground_level": 0.2, "seed_level": 0.7, "min_size": 5}


#: Context 8, step 2, eval output (8, 12).
unet_2d = partial(tiny_unet, 2, input_shape=(20, 20), num_fmaps=3, eval_shape_increase=(4, 8))
#: Anisotropic: pools in-plane only; context (2, 8, 8), eval output (8, 12, 12).
unet_3d = partial(
    tiny_unet, 3, input_shape=(12, 20, 20), downsample_factors=[(1, 2, 2)],
    kernel_size_down=[[(1, 3, 3), (1, 3, 3)], [3, 3]], kernel_size_up=[[(1, 3, 3), (1, 3, 3)]],
    eval_shape_increase=(0, 8, 8),
)
predictor = tiny_predictor


def make_raw(path: Path | str, data: np.ndarray, voxel_size: tuple[int, ...],
             offset: tuple[int, ...] | None = None, channels: bool = False) -> str:
    spatial = data.shape[1:] if channels else data.shape
    offset = offset or (0,) * len(spatial)
    roi = Roi(offset, tuple(s * v for s, v in zip(spatial, voxel_size, strict=True)))
    array = create_volume(path, roi=roi, voxel_size=voxel_size, dtype=data.dtype,
                          num_channels=data.shape[0] if channels else None)
    array[roi] = data
    mark_complete(array)
    return str(path)


def save(tmp_path: Path, ckpt: Checkpoint, name: str = "model.pt") -> str:
    return str(save_checkpoint(tmp_path / name, ckpt))


def one_pass_reference(model: torch.nn.Module, unet: UNet, raw: np.ndarray) -> np.ndarray:
    """The whole (normalised) array in one forward pass: mirrored by the context on the low
    side, and on the high side by whatever makes the input valid. Obviously right for a
    valid U-Net, and independent of tiling."""
    context = [int(c) for c in unet.context]
    spatial = raw.shape[1:]
    shape = unet.valid_input_shape([s + 2 * c for s, c in zip(spatial, context, strict=True)])
    pad = [(0, 0)] + [(c, n - s - c) for s, c, n in zip(spatial, context, shape, strict=True)]
    padded = np.pad(raw, pad, mode="reflect")
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(padded)[None]).numpy()[0]
    return out[(slice(None), *(slice(0, s) for s in spatial))]


# --- normalisation -----------------------------------------------------------------------------


def test_normalize_raw_by_hand() -> None:
    raw = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(
        normalize_raw(raw, NORM), np.array([[0, 0.2], [0.8, 1]], dtype=np.float32)
    )
    out = normalize_raw(np.array([-10.0, 10.0, 30.0]), {"min": 10, "max": 30})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1.0, 0.0, 1.0])  # not clipped


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=20),
    st.integers(-500, 500),
    st.integers(1, 1000),
)
def test_normalize_raw_is_the_linear_map(values: list[int], low: int, width: int) -> None:
    raw = np.array(values, dtype=np.int16)
    out = normalize_raw(raw, {"min": low, "max": low + width})
    np.testing.assert_allclose(out, (raw - low) / width, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalize_raw_refuses_non_finite_values(bad: float) -> None:
    raw = np.zeros((3, 4), dtype=np.float32)
    raw[1, 2] = bad
    with pytest.raises(NonFiniteRawError, match=r"in block 7: 1 voxel\(s\), the first at index "
                                                r"\(1, 2\)"):
        normalize_raw(raw, NORM, where="block 7")
    assert issubclass(NonFiniteRawError, ValueError)


def test_normalize_raw_errors() -> None:
    with pytest.raises(TypeError, match="integers or floats, got dtype bool"):
        normalize_raw(np.zeros(3, dtype=bool), NORM)
    with pytest.raises(ValueError, match="min < max"):
        normalize_raw(np.zeros(3), {"min": 1, "max": 0})
    with pytest.raises(ValueError, match=r"missing keys \['max'\]"):
        normalize_raw(np.zeros(3), {"min": 1})


def test_dequantize() -> None:
    attrs = {"innerdist_quantization": {"scale": 0.5, "offset": -1.0}}
    np.testing.assert_array_equal(dequantize(np.array([0, 2, 4], np.uint8), attrs), [-1, 0, 1])
    out = dequantize(np.array([0.25], np.float32), {})
    assert out.dtype == np.float32 and out[0] == 0.25


# --- geometry ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 7),
    st.integers(1, 6),
    st.integers(-15, 15),
    st.integers(1, 25),
    st.integers(-15, 15),
    st.integers(1, 25),
)
def test_mirrored_reads_match_numpy_reflect(n0: int, n1: int, b0: int, s0: int, b1: int,
                                            s1: int) -> None:
    data = np.arange(2 * n0 * n1, dtype=np.float32).reshape(2, n0, n1)
    reads: list[tuple[slice, ...]] = []

    def read_box(box: tuple[slice, ...]) -> np.ndarray:
        reads.append(box)
        return data[(slice(None), *box)]

    got = _read_reflected(read_box, (n0, n1), (b0, b1), (s0, s1))
    pad = 60
    padded = data
    for axis, n in ((1, n0), (2, n1)):
        widths = [(0, 0)] * 3
        widths[axis] = (pad, pad)
        # A single voxel mirrors onto itself, i.e. it is repeated.
        padded = np.pad(padded, widths, mode="reflect" if n > 1 else "edge")
    expected = padded[:, pad + b0 : pad + b0 + s0, pad + b1 : pad + b1 + s1]
    np.testing.assert_array_equal(got, expected)
    # One read, inside the data.
    assert len(reads) == 1
    for s, n in zip(reads[0], (n0, n1), strict=True):
        assert 0 <= s.start < s.stop <= n


def test_tiling_geometry() -> None:
    tiling = _Tiling(unet_2d())
    assert tiling.margin == (8, 8) and tiling.step == (2, 2) and tiling.crop == (0, 0)
    assert tiling.max_tile == (8, 12)
    # Few tiles, evenly split, multiples of the step.
    assert tiling.tile_shape((18, 13)) == (6, 8)  # 3 x 6 rather than 8 + 8 + 2
    assert tiling.tile_shape((3, 1)) == (4, 2)
    assert tiling.input_shape((6, 8)) == (22, 24)
    same = _Tiling(unet_2d(padding="same"))
    # Receptive radius: valid context 8 plus step - 1, rounded up to the step.
    assert same.margin == (10, 10) and same.crop == (10, 10)


# --- in memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [2, 3])
def test_predict_array_matches_one_forward_pass(dims: int) -> None:
    unet = unet_2d() if dims == 2 else unet_3d()
    model = random_checkpoint(unet, predictor(), (4,) * dims, NORM, seed=1).build_model()
    shape = (37, 45) if dims == 2 else (9, 27, 30)
    raw = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    expected = one_pass_reference(model, unet, raw)
    got = predict_array(model, raw[0])  # no channel axis: one channel
    assert got.shape == (2, *shape) and got.dtype == np.float32
    assert expected.std() > 0.01  # random weights, but not a constant output
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_predict_array_does_not_depend_on_tiles_or_batches() -> None:
    unet = unet_2d(num_in_channels=2)
    model = random_checkpoint(unet, predictor(3), (4, 4), NORM, seed=2).build_model()
    raw = np.random.default_rng(1).random((2, 33, 21), dtype=np.float32)
    whole = predict_array(model, raw)
    assert whole.shape == (3, 33, 21)
    for tile, batch in [((4, 6), 1), ((6, 10), 4), ((64, 64), 1), ((5, 7), 3)]:
        np.testing.assert_allclose(
            predict_array(model, raw, tile_shape=tile, batch_size=batch), whole, atol=1e-5
        )


def test_a_gpu_with_memory_to_spare_gets_larger_tiles_that_predict_the_same() -> None:
    import torch

    from innerdist.plan import GPU_MEMORY_FRACTION, choose_tile
    from innerdist.predict import _device_tiling, _Tiling

    unet = unet_2d()
    model = random_checkpoint(unet, predictor(), (4, 4), NORM, seed=4).build_model()
    base = _Tiling(unet)
    inputs = int(np.prod(base.input_shape(base.max_tile)))
    cpu = torch.device("cpu")
    assert _device_tiling(model, base, (60, 70), batch_size=1, device=cpu,
                          precision="fp32") is base  # no GPU: the eval tile
    # A pass of the eval tile takes 100 bytes per input voxel; 40x that much is free.
    grown = _device_tiling(model, base, (60, 70), batch_size=1, device=cpu, precision="fp32",
                           memory=lambda: (100 * inputs, 40 * 100 * inputs))
    expected = choose_tile(base.max_tile, step=base.step, margin=base.margin, extent=(60, 70),
                           bytes_per_input_voxel=100.0,
                           budget_bytes=int(GPU_MEMORY_FRACTION * 40 * 100 * inputs))
    assert grown.max_tile == expected
    assert all(g > b for g, b in zip(grown.max_tile, base.max_tile, strict=True))
    assert all(t % s == 0 for t, s in zip(grown.max_tile, base.step, strict=True))
    # A batch of 4 tiles per pass leaves room for smaller ones only.
    batched = _device_tiling(model, base, (60, 70), batch_size=4, device=cpu,
                             precision="fp32", memory=lambda: (100 * inputs, 40 * 100 * inputs))
    assert np.prod(batched.max_tile) < np.prod(grown.max_tile)
    # No room at all: never below the eval tile.
    tight = _device_tiling(model, base, (60, 70), batch_size=1, device=cpu, precision="fp32",
                           memory=lambda: (100 * inputs, 10 * inputs))
    assert tight.max_tile == base.max_tile
    raw = np.random.default_rng(3).random((60, 70), dtype=np.float32)
    np.testing.assert_allclose(predict_array(model, raw, tile_shape=grown.max_tile),
                               predict_array(model, raw), atol=1e-5)


def test_same_padding_margin_hides_the_zero_padding() -> None:
    # With a margin as wide as the receptive field, a same-padded U-Net never lets its
    # zero padding reach a written voxel, so it predicts exactly what the valid U-Net with
    # the same weights does.
    ckpt = random_checkpoint(unet_2d(), predictor(), (4, 4), NORM, seed=3)
    valid = ckpt.build_model()
    same = predictor().create_model(unet_2d(padding="same"))
    same.load_state_dict(ckpt.weights)
    raw = np.random.default_rng(2).random((29, 26), dtype=np.float32)
    np.testing.assert_allclose(predict_array(same, raw, tile_shape=(6, 8)),
                               predict_array(valid, raw), atol=1e-5)


def test_predict_array_restores_the_training_mode() -> None:
    model = random_checkpoint(unet_2d(), predictor(), (4, 4), NORM).build_model()
    model.train()
    predict_array(model, np.zeros((10, 10), np.float32))
    assert model.training


def test_predict_array_errors() -> None:
    model = random_checkpoint(unet_2d(), predictor(), (4, 4), NORM).build_model()
    good = np.zeros((10, 10), np.float32)
    with pytest.raises(TypeError, match="must be an innerdist Model"):
        predict_array(torch.nn.Conv2d(1, 1, 1), good)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a numpy array"):
        predict_array(model, good.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(10,\) does not fit a 2-D model"):
        predict_array(model, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"2 channel\(s\) .* the model takes 1"):
        predict_array(model, np.zeros((2, 10, 10), np.float32))
    with pytest.raises(TypeError, match="must be numeric"):
        predict_array(model, np.zeros((10, 10), bool))
    nan = good.copy()
    nan[3, 3] = np.nan
    with pytest.raises(NonFiniteRawError, match="non-finite"):
        predict_array(model, nan)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict_array(model, good, batch_size=0)
    with pytest.raises(ValueError, match="tile_shape must have 2 entries"):
        predict_array(model, good, tile_shape=(4, 4, 4))
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda'"):
        predict_array(model, good, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu() -> None:
    model = random_checkpoint(unet_2d(), predictor(), (4, 4), NORM).build_model()
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        predict_array(model, np.zeros((10, 10), np.float32), device="cuda")


# --- blockwise ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 37 x 45 uint8 volume (voxel size (6, 4), offset (12, 40)), a 2-D checkpoint with
    post-processing parameters, and its in-memory prediction (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("volume")
    data = np.random.default_rng(5).integers(0, 256, (37, 45), dtype=np.uint8)
    raw = make_raw(tmp / "data.zarr" / "raw", data, (6, 4), offset=(12, 40))
    ckpt = random_checkpoint(unet_2d(), predictor(), (6, 4), NORM, seed=4)
    ckpt.postprocessing = dict(POST)
    ckpt.__post_init__()
    expected = predict_array(ckpt.build_model(), normalize_raw(data, NORM))
    assert expected.std() > 0.01
    return {"raw": raw, "data": data, "ckpt": ckpt, "path": save(tmp, ckpt),
            "expected": expected}


@pytest.fixture
def volume_2d(volume: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """:func:`volume` with an output path of this test's own."""
    return {**volume, "out": str(tmp_path / "out.zarr" / "pred")}


def test_blockwise_equals_in_memory_2d(volume_2d: dict[str, Any]) -> None:
    out = predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"],
                         block_shape=(10, 13), progress=False)
    assert out == volume_2d["out"]
    pred = open_volume(out)
    assert is_complete(pred)
    assert pred.roi == Roi((12, 40), (37 * 6, 45 * 4))
    assert tuple(pred.voxel_size) == (6, 4)
    assert pred.axis_names == ["c^", "y", "x"]
    assert tuple(pred.chunk_shape) == (2, 10, 14)  # 13 rounded up to the output step
    assert pred.attrs["innerdist_postprocessing"] == POST
    assert pred.attrs["innerdist_predictor"]["channels"] == ["c0", "c1"]
    assert "innerdist_quantization" not in pred.attrs
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)
    # The block tracking is gone once the output is complete.
    assert not (Path(out).parent / ".innerdist-blocks" / "pred").exists()


def test_blockwise_equals_in_memory_3d_with_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(0, 4000, (2, 11, 29, 31), dtype=np.uint16)
    norm = {"min": 0, "max": 4000, "dtype": "uint16"}
    raw = make_raw(tmp_path / "d.zarr" / "raw", data, (40, 8, 8), offset=(80, 0, 16),
                   channels=True)
    ckpt = random_checkpoint(unet_3d(num_in_channels=2), predictor(1), (40, 8, 8), norm, seed=6)
    out = predict_volume(save(tmp_path, ckpt), raw, str(tmp_path / "d.zarr" / "pred"),
                         block_shape=(4, 10, 12), batch_size=2, progress=False)
    pred = open_volume(out)
    expected = predict_array(ckpt.build_model(), normalize_raw(data, norm))
    assert pred.shape == (1, 11, 29, 31)
    assert expected.std() > 0.01
    np.testing.assert_allclose(pred[pred.roi], expected, atol=1e-5)


def test_n5_raw(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    from test_n5 import write_n5  # the N5 writer of the N5 reader's tests

    write_n5(tmp_path / "raw.n5", "raw", volume_2d["data"], (16, 16),
             attrs={"voxel_size": [6, 4], "offset": [12, 40]})
    out = predict_volume(volume_2d["path"], str(tmp_path / "raw.n5" / "raw"), volume_2d["out"],
                         block_shape=(20, 24), progress=False)
    pred = open_volume(out)
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)


def test_roi_is_snapped_and_predicted_like_the_whole_volume(volume_2d: dict[str, Any]) -> None:
    # Starts 5 and 7 voxels into the data: off the output-step grid, and off the voxel
    # grid by a few nm (grown to it).
    roi = Roi((12 + 5 * 6 + 2, 40 + 7 * 4 + 1), (20 * 6, 21 * 4))
    out = predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"], roi=roi,
                         block_shape=(8, 8), progress=False)
    pred = open_volume(out)
    assert pred.roi == Roi((12 + 5 * 6, 40 + 7 * 4), (21 * 6, 22 * 4))
    expected = volume_2d["expected"][:, 5:26, 7:29]
    np.testing.assert_allclose(pred[pred.roi], expected, atol=1e-5)


@pytest.mark.parametrize(("dtype", "atol"), [("uint8", 0.5 / 255 + 1e-6), ("float16", 2e-3)])
def test_quantized_outputs(volume_2d: dict[str, Any], dtype: str, atol: float) -> None:
    out = predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"], dtype=dtype,
                         block_shape=(20, 24), progress=False)
    pred = open_volume(out)
    assert pred.dtype == np.dtype(dtype)
    expected = volume_2d["expected"]
    if dtype == "uint8":  # the [0, 1] range of inner distances, clipped
        assert pred.attrs["innerdist_quantization"] == {"scale": 1 / 255, "offset": 0.0}
        expected = np.clip(expected, 0, 1)
    np.testing.assert_allclose(dequantize(pred[pred.roi], pred.attrs), expected, atol=atol)


def test_planned_blocks_are_whole_tiles_and_give_the_in_memory_output(
    volume_2d: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from innerdist.plan import choose_block_shape

    # Default budget: the 37 x 45 image is one block.
    out = predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"], batch_size=3,
                         progress=False)
    pred = open_volume(out)
    assert tuple(pred.chunk_shape) == (2, 37, 45)
    assert pred.attrs["innerdist_job"]["block_shape"] == [37, 45]
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)

    # A budget of a few tiles: several blocks, each a whole number of (batched) tiles.
    chosen: list[tuple[int, ...]] = []

    def spy(*args: Any, **kwargs: Any) -> tuple[int, ...]:
        chosen.append(choose_block_shape(*args, **kwargs))
        assert kwargs["tile"] == [24, 12]  # eval output 8 x 12, first axis times the batch
        return chosen[-1]

    monkeypatch.setattr("innerdist.plan.choose_block_shape", spy)
    out2 = str(Path(volume_2d["out"]).parent / "small")
    predict_volume(volume_2d["path"], volume_2d["raw"], out2, batch_size=3, progress=False,
                   memory_budget=20_000)
    block = chosen[0]
    # Each axis whole tiles, or the whole image (then the tiles split it as in memory).
    assert all(b % t == 0 or b == v for b, t, v in zip(block, (24, 12), (37, 45), strict=True))
    assert block[1] < 45, block
    pred2 = open_volume(out2)
    assert pred2.attrs["innerdist_job"]["block_shape"] == list(block)
    np.testing.assert_allclose(pred2[pred2.roi], volume_2d["expected"], atol=1e-5)

    # Run again where the planner would cut other blocks: the finished output is the same
    # job (a no-op), not "another job's output".
    chosen.clear()
    stamp = (Path(out) / "s0" / "zarr.json").stat().st_mtime_ns
    assert predict_volume(volume_2d["path"], volume_2d["raw"], out, batch_size=3,
                          progress=False, memory_budget=20_000, num_workers=2) == out
    assert chosen == [] and (Path(out) / "s0" / "zarr.json").stat().st_mtime_ns == stamp


def test_two_workers_fail_on_nan_and_resume(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    # Worker processes report a NaN in the raw as the same clear error as a serial run; the
    # blocks they finished stay recorded, and once the raw is fixed the same job resumes.
    bad = volume_2d["data"].astype(np.float32)
    bad[36, 44] = np.inf  # in the last block
    raw = make_raw(tmp_path / "nan.zarr" / "raw", bad, (6, 4), (12, 40))
    out = volume_2d["out"]
    with pytest.raises(NonFiniteRawError, match=r"non-finite values .* in raw .*ROI"):
        predict_volume(volume_2d["path"], raw, out, block_shape=(20, 24), num_workers=2,
                       progress=False)
    assert not is_complete(open_volume(out))

    fixed = open_volume(raw, mode="r+")
    fixed[fixed.roi] = volume_2d["data"].astype(np.float32)
    calls: list[Roi] = []
    original = _BlockPredictor.__call__

    def counted(self: _BlockPredictor, read_roi: Roi, write_roi: Roi) -> None:
        calls.append(write_roi)
        original(self, read_roi, write_roi)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_BlockPredictor, "__call__", counted)
        predict_volume(volume_2d["path"], raw, out, block_shape=(20, 24), progress=False)
    assert 1 <= len(calls) < 4  # 2 x 2 blocks: the workers finished at least one
    pred = open_volume(out)
    assert is_complete(pred)
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)


def test_existing_outputs(volume_2d: dict[str, Any]) -> None:
    args = (volume_2d["path"], volume_2d["raw"], volume_2d["out"])
    predict_volume(*args, block_shape=(40, 48), progress=False)
    written = open_volume(volume_2d["out"])
    before = written[written.roi]
    predict_volume(*args, block_shape=(40, 48), progress=False)  # same job: a no-op
    np.testing.assert_array_equal(written[written.roi], before)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        predict_volume(*args, block_shape=(40, 48), dtype="float16", progress=False)
    predict_volume(*args, block_shape=(40, 48), dtype="uint8", overwrite=True, progress=False)
    assert open_volume(volume_2d["out"]).dtype == np.uint8


def test_unfinished_output_of_another_job(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    bad = volume_2d["data"].astype(np.float32)
    bad[30, 40] = np.nan  # fails late: blocks before it are written
    raw = make_raw(tmp_path / "nan.zarr" / "raw", bad, (6, 4), (12, 40))
    out = str(tmp_path / "nan.zarr" / "pred")
    with pytest.raises(NonFiniteRawError, match="non-finite values"):
        predict_volume(volume_2d["path"], raw, out, block_shape=(8, 8), progress=False)
    assert not is_complete(open_volume(out))
    # Resuming needs the same job: another dtype is another job.
    with pytest.raises(FileExistsError, match="unfinished output of a different job"):
        predict_volume(volume_2d["path"], raw, out, block_shape=(8, 8), dtype="uint8",
                       progress=False)


def test_raw_of_another_dtype_is_used_with_a_warning(
    volume_2d: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = make_raw(tmp_path / "f.zarr" / "raw", volume_2d["data"].astype(np.float32), (6, 4),
                   (12, 40))
    with caplog.at_level(logging.WARNING, logger="innerdist.predict"):
        out = predict_volume(volume_2d["path"], raw, str(tmp_path / "f.zarr" / "p"),
                             block_shape=(20, 24), progress=False)
    assert "is float32 but the network was trained on uint8" in caplog.text
    pred = open_volume(out)
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)


def _errors(volume: dict[str, Any], tmp_path: Path) -> list[tuple[dict[str, Any], type, str]]:
    """(predict_volume arguments, exception, message) for inputs that must be refused."""
    data = volume["data"]
    other_voxel = make_raw(tmp_path / "e.zarr" / "vox", data, (4, 4), (12, 40))
    two_channels = make_raw(tmp_path / "e.zarr" / "two", np.stack([data, data]), (6, 4),
                            (12, 40), channels=True)
    three_d = make_raw(tmp_path / "e.zarr" / "3d", data[None], (6, 6, 4))
    base = {"checkpoint": volume["path"], "raw": volume["raw"], "out": volume["out"]}
    return [
        ({**base, "checkpoint": str(tmp_path / "nope.pt")}, FileNotFoundError, "no checkpoint"),
        ({**base, "raw": str(Path(volume["raw"]).parent / "nope")}, FileNotFoundError,
         "dataset 'nope' not found"),
        ({**base, "raw": str(tmp_path / "nope.zarr" / "raw")}, FileNotFoundError,
         "no container at"),
        ({**base, "raw": other_voxel}, ValueError,
         r"voxel size \(4, 4\) but the checkpoint was trained at voxel size \(6, 4\)"),
        ({**base, "raw": two_channels}, ValueError,
         r"has 2 channel\(s\) .* takes 1 input channel"),
        ({**base, "raw": three_d}, ValueError, "has 3 spatial axes .* model is 2-D"),
        ({**base, "roi": Roi((0, 0), (60, 60))}, ValueError,
         r"roi \[0:60, 0:60\] .* is not inside the raw data's ROI \[12:234, 40:220\]"),
        ({**base, "roi": Roi((12, 40, 0), (6, 4, 4))}, ValueError, "roi .* has 3 axes"),
        ({**base, "roi": "0,0:10,10"}, TypeError, "must be a funlib.geometry.Roi"),
        ({**base, "out": volume["raw"]}, ValueError, "is the raw volume"),
        ({**base, "out": str(tmp_path / "o.n5" / "pred")}, ValueError, "written as zarr"),
        ({**base, "dtype": "int32"}, ValueError, "dtype must be one of"),
        ({**base, "num_workers": 0}, ValueError, "num_workers must be >= 1"),
        ({**base, "batch_size": 1.5}, TypeError, "batch_size must be an integer"),
        ({**base, "block_shape": (8, 8, 8)}, ValueError, "block_shape must have 2 entries"),
        ({**base, "block_shape": (8, 0)}, ValueError, "block_shape entry must be >= 1"),
        ({**base, "device": "gpu0"}, ValueError, "device must be"),
    ]


def test_input_errors_leave_no_output(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    for kwargs, error, message in _errors(volume_2d, tmp_path):
        with pytest.raises(error, match=message):
            predict_volume(**kwargs, progress=False)
        assert not Path(volume_2d["out"]).exists(), kwargs


# --- the command line --------------------------------------------------------------------------


def test_parse_roi() -> None:
    assert parse_roi("0,40:80,200") == Roi((0, 40), (80, 160))
    assert parse_roi(" 8, 0, 0 : 16, 8, 8 ") == Roi((8, 0, 0), (8, 8, 8))
    for bad, message in [("0,0", "BEGIN:END"), ("a,b:c,d", "BEGIN:END"), ("0,0:1:2", "BEGIN:END"),
                         ("0,0:8", "same number of axes"), ("0,8:8,8", "greater than begin")]:
        with pytest.raises(ValueError, match=message):
            parse_roi(bad)
    with pytest.raises(TypeError, match="must be a string"):
        parse_roi(None)  # type: ignore[arg-type]


def test_cli_predict(volume_2d: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, [
        "predict", volume_2d["path"], volume_2d["raw"], volume_2d["out"],
        "--roi", "42,68:162,152", "--block-shape", "8,10", "--dtype", "uint8",
        "--batch-size", "2", "--workers", "1", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert f"wrote {volume_2d['out']}" in result.stdout
    pred = open_volume(volume_2d["out"])
    assert pred.roi == Roi((42, 68), (120, 84))
    expected = np.clip(volume_2d["expected"][:, 5:25, 7:28], 0, 1)
    np.testing.assert_allclose(dequantize(pred[pred.roi], pred.attrs), expected,
                               atol=0.5 / 255 + 1e-6)


def test_cli_errors_are_one_line_with_exit_code_2(volume_2d: dict[str, Any],
                                                  tmp_path: Path) -> None:
    cases = [
        (["--dtype", "int32"], "dtype must be one of"),
        (["--roi", "0,0:10"], "same number of axes"),
        (["--roi", "0,0:60,60"], "is not inside the raw data's ROI"),
    ]
    for kwargs, _, message in _errors(volume_2d, tmp_path):
        if set(kwargs) - {"checkpoint", "raw", "out"}:
            continue  # options are covered above
        cases.append(([kwargs["checkpoint"], kwargs["raw"], kwargs["out"]], message))
    runner = CliRunner()
    for args, message in cases:
        if not args[0].endswith(".pt"):
            args = [volume_2d["path"], volume_2d["raw"], volume_2d["out"], *args]
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("innerdist predict: error: ")
        assert re.search(message, lines[0]), (message, lines[0])
        assert not Path(volume_2d["out"]).exists()

    args = ["predict", volume_2d["path"], volume_2d["raw"], volume_2d["out"],
            "--block-shape", "40,48"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)  # the same job again: a no-op
    assert result.exit_code == 0 and "already complete" in result.stdout, result.output
    result = runner.invoke(app, [*args, "--dtype", "uint8"])
    assert result.exit_code == 2
    assert "already exists; pass --overwrite" in result.stderr.strip().splitlines()[-1]


def test_cli_nan_in_raw(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    bad = volume_2d["data"].astype(np.float32)
    bad[20, 20] = np.nan
    raw = make_raw(tmp_path / "nan.zarr" / "raw", bad, (6, 4), (12, 40))
    out = str(tmp_path / "nan.zarr" / "pred")
    result = CliRunner().invoke(app, ["predict", volume_2d["path"], raw, out,
                                      "--block-shape", "20,24"])
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("innerdist predict: error: non-finite values (NaN or inf) in raw")
    assert "Traceback" not in result.stderr
    assert not is_complete(open_volume(out))


# --- resuming after a crash --------------------------------------------------------------------

# Runs the CLI after wrapping the per-block work: every finished block is logged, and the
# process SIGKILLs itself when it is about to start block number DIE + 1.
_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import innerdist.predict as predict

    log, die = sys.argv[1], int(sys.argv[2])
    original = predict._BlockPredictor.__call__
    done = []

    def counted(self, read_roi, write_roi):
        if len(done) == die:
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, read_roi, write_roi)
        done.append(write_roi)
        with open(log, "a") as f:
            f.write(f"{write_roi}\\n")

    predict._BlockPredictor.__call__ = counted
    from innerdist.cli import app
    app(sys.argv[3:])
    """
)


def test_killed_run_resumes_where_it_stopped(volume_2d: dict[str, Any], tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    log = tmp_path / "first.log"
    args = ["predict", volume_2d["path"], volume_2d["raw"], volume_2d["out"],
            "--block-shape", "10,12"]  # 4 x 4 = 16 blocks
    killed = subprocess.run(
        [sys.executable, str(driver), str(log), "5", *args], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done_before = log.read_text().splitlines()
    assert len(done_before) == 5
    assert not is_complete(open_volume(volume_2d["out"]))

    # The same command again (here in this process) runs only the blocks that are left.
    calls: list[str] = []
    original = _BlockPredictor.__call__

    def counted(self: _BlockPredictor, read_roi: Roi, write_roi: Roi) -> None:
        calls.append(str(write_roi))
        original(self, read_roi, write_roi)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_BlockPredictor, "__call__", counted)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 16 - 5
    assert not set(calls) & set(done_before)

    pred = open_volume(volume_2d["out"])
    assert is_complete(pred)
    uninterrupted = predict_volume(volume_2d["path"], volume_2d["raw"],
                                   str(tmp_path / "again.zarr" / "pred"),
                                   block_shape=(10, 12), progress=False)
    np.testing.assert_allclose(pred[pred.roi], open_volume(uninterrupted)[pred.roi], atol=1e-6)
    np.testing.assert_allclose(pred[pred.roi], volume_2d["expected"], atol=1e-5)


# --- test-time augmentation ----------------------------------------------------------------


def tta_reference(model: Any, raw: np.ndarray, voxel_size: tuple[int, ...]) -> np.ndarray:
    """Slow and obvious: transform the whole array with numpy, predict it without TTA,
    transform back, average."""
    dims = len(voxel_size)
    outputs = []
    for perm, flips in tta_transforms(voxel_size):
        axes = tuple(i + 1 for i in range(dims) if flips[i])
        view = np.flip(np.transpose(raw, (0, *(p + 1 for p in perm))), axes)
        pred = np.flip(predict_array(model, np.ascontiguousarray(view)), axes)
        outputs.append(np.transpose(pred, (0, *(int(i) + 1 for i in np.argsort(perm)))))
    return np.mean(outputs, axis=0)


def test_tta_transforms_follow_the_voxel_size() -> None:
    assert tta_transforms((4, 4))[0] == ((0, 1), (False, False))  # the identity first
    assert {perm for perm, _ in tta_transforms((4, 4))} == {(0, 1), (1, 0)}
    assert {perm for perm, _ in tta_transforms((6, 4))} == {(0, 1)}  # no transpose
    # (40, 8, 8): only y and x may be exchanged; 8 flips each.
    assert {perm for perm, _ in tta_transforms((40, 8, 8))} == {(0, 1, 2), (0, 2, 1)}
    assert {perm for perm, _ in tta_transforms((8, 40, 8))} == {(0, 1, 2), (2, 1, 0)}
    assert len(tta_transforms((5, 5, 5))) == 48
    views = tta_transforms((8, 8, 8))
    assert len(set(views)) == len(views)


@pytest.mark.parametrize("voxel_size", [(4, 4), (6, 4)])
def test_tta_in_memory_equals_the_numpy_reference(voxel_size: tuple[int, int]) -> None:
    # Not square, so a transpose mixed up with its inverse would not even fit.
    raw = np.random.default_rng(9).random((1, 13, 18)).astype(np.float32)
    model = random_checkpoint(unet_2d(), predictor(), voxel_size, NORM, seed=2).build_model()
    got = predict_array(model, raw, tta=True, voxel_size=voxel_size, tile_shape=(8, 8))
    np.testing.assert_allclose(got, tta_reference(model, raw, voxel_size), atol=1e-5)
    plain = predict_array(model, raw)
    assert np.abs(got - plain).max() > 1e-3  # an untrained net is far from equivariant
    # The average over a group of views is itself equivariant under the group.
    flipped = predict_array(model, np.ascontiguousarray(raw[:, ::-1]), tta=True,
                            voxel_size=voxel_size)
    np.testing.assert_allclose(flipped[:, ::-1], got, atol=1e-5)


def test_tta_input_errors() -> None:
    model = random_checkpoint(unet_2d(), predictor(), (4, 4), NORM, seed=2).build_model()
    raw = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="tta needs voxel_size"):
        predict_array(model, raw, tta=True)
    with pytest.raises(ValueError, match="voxel_size must have 2 entries"):
        predict_array(model, raw, tta=True, voxel_size=(4, 4, 4))
    with pytest.raises(TypeError, match="tta must be True or False"):
        predict_array(model, raw, tta=1)  # type: ignore[arg-type]


def test_tta_blockwise_equals_in_memory_2d(volume_2d: dict[str, Any]) -> None:
    out = predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"],
                         block_shape=(10, 12), progress=False, tta=True)
    pred = open_volume(out)
    assert pred.attrs["innerdist_tta"] == 4  # voxel size (6, 4): flips only
    model = volume_2d["ckpt"].build_model()
    expected = predict_array(model, normalize_raw(volume_2d["data"], NORM), tta=True,
                             voxel_size=(6, 4))
    np.testing.assert_allclose(pred[pred.roi], expected, atol=1e-5)
    assert np.abs(expected - volume_2d["expected"]).max() > 1e-3
    with pytest.raises(TypeError, match="tta must be True or False"):
        predict_volume(volume_2d["path"], volume_2d["raw"], volume_2d["out"],
                       tta="yes", overwrite=True)  # type: ignore[arg-type]


@pytest.mark.slow
def test_tta_blockwise_equals_in_memory_3d_with_transposes(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(0, 4000, (9, 21, 26), dtype=np.uint16)
    norm = {"min": 0, "max": 4000, "dtype": "uint16"}
    raw = make_raw(tmp_path / "d.zarr" / "raw", data, (40, 8, 8), offset=(80, 0, 16))
    ckpt = random_checkpoint(unet_3d(), predictor(1), (40, 8, 8), norm, seed=6)
    out = predict_volume(save(tmp_path, ckpt), raw, str(tmp_path / "d.zarr" / "pred"),
                         block_shape=(4, 10, 12), roi=Roi((120, 8, 32), (240, 120, 160)),
                         progress=False, tta=True)
    pred = open_volume(out)
    assert pred.attrs["innerdist_tta"] == 16
    expected = predict_array(ckpt.build_model(), normalize_raw(data, norm)[np.newaxis],
                             tta=True, voxel_size=(40, 8, 8))
    # The ROI starts at voxel (1, 1, 2) of the raw: 6 x 15 x 20 voxels of it.
    np.testing.assert_allclose(pred[pred.roi], expected[:, 1:7, 1:16, 2:22], atol=1e-5)


def test_cli_predict_tta_and_no_resume_across_modes(volume_2d: dict[str, Any]) -> None:
    args = ["predict", volume_2d["path"], volume_2d["raw"], volume_2d["out"],
            "--block-shape", "20,24"]
    result = CliRunner().invoke(app, [*args, "--tta"])
    assert result.exit_code == 0, result.output
    assert open_volume(volume_2d["out"]).attrs["innerdist_tta"] == 4
    again = CliRunner().invoke(app, args)  # a plain prediction does not reuse a TTA one
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.slow
def test_the_gpu_check_script_rehearses_on_the_cpu(tmp_path: Path) -> None:
    # bench/gpu_check.sh runs where a GPU is lent, once, with no time to debug it there:
    # its --smoke run goes through every step (train + resume, predict, forward, segment).
    import json

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, GPU_CHECK_OUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "--smoke"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {r["what"] for r in result["rows"]} >= {"predict cpu fp32", "segment"}
    assert result["facts"]["max_abs_diff cpu fp32 vs cuda fp32"] == 0  # both on the CPU
    assert result["facts"]["segment_objects"] > 0
