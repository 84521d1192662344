"""The plan of a blockwise job (innerdist.plan, predict --dry-run)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi
from nets import NORM_UINT8, tiny_predictor, tiny_unet
from typer.testing import CliRunner

from innerdist.plan import Plan, _duration, _size, measure_block, output_bytes


def plan(**changes: object) -> Plan:
    fields: dict[str, object] = {
        "job": "predict", "blocks": 10, "block_shape": (64, 64), "workers": 4,
        "block_seconds": 2.0, "block_memory_bytes": 3 * 2**20, "device_memory_bytes": None,
        "output_bytes": 5 * 2**30, "output_description": "float32, 1 channel(s), uncompressed",
        "worker_startup_seconds": 3.0,
    }
    return Plan(**{**fields, **changes})  # type: ignore[arg-type]


def test_estimate_is_start_up_plus_rounds_of_blocks() -> None:
    assert plan().estimated_seconds == 3.0 + 3 * 2.0  # 10 blocks on 4 workers: 3 rounds
    assert plan(workers=1, worker_startup_seconds=0.0).estimated_seconds == 20.0
    assert plan(workers=10).estimated_seconds == 5.0
    # Measured set-up and first-block warm-up are paid once.
    measured = plan(setup_seconds=1.5, warmup_seconds=0.5)
    assert measured.estimated_seconds == 1.5 + 3.0 + 0.5 + 3 * 2.0
    assert "(worker start-up 3 s, set-up 1.5 s, first block +0.5 s)" in str(measured)


def test_plan_text() -> None:
    assert str(plan()).splitlines() == [
        "predict: plan (nothing was written)",
        "  blocks               10 of (64, 64) voxels",
        "  per block            2 s, 3.0 MiB host memory (measured on one sample block)",
        "  output on disk       <= 5.0 GiB (float32, 1 channel(s), uncompressed)",
        "  estimated wall time  9.0 s with 4 worker(s) (worker start-up 3 s)",
    ]
    text = str(plan(block_memory_bytes=None, device_memory_bytes=512))
    assert "host memory not measurable here, 512 B GPU memory" in text
    assert (_size(1023), _size(1536), _size(3 * 2**40)) == ("1023 B", "1.5 KiB", "3.0 TiB")
    assert (_duration(59.94), _duration(61), _duration(3 * 3600 + 125)) == (
        "59.9 s", "1 min 1 s", "3 h 2 min")


def test_output_bytes() -> None:
    assert output_bytes((2, 3, 4), 2, "float32") == 2 * 3 * 4 * 2 * 4
    assert output_bytes((100_000, 100_000), 1, np.uint8) == 10**10  # no int32 overflow


def test_measure_block_times_the_second_run_and_its_memory() -> None:
    calls: list[Roi] = []

    def process(read_roi: Roi, write_roi: Roi) -> None:
        calls.append(write_roi)
        block = np.ones(50 * 2**20 // 8)  # 50 MiB touched
        time.sleep(0.05)
        del block

    roi = Roi((0,), (4,))
    seconds, host, gpu = measure_block(process, roi, roi)
    assert len(calls) == 2 and gpu is None
    assert 0.05 <= seconds < 5
    assert host is not None and 40 * 2**20 <= host < 500 * 2**20


def test_predict_dry_run_writes_nothing(tmp_path: Path) -> None:
    from test_targets import write_labels

    from innerdist.checkpoint import random_checkpoint, save_checkpoint
    from innerdist.cli import app
    from innerdist.predict import predict_volume

    raw = np.random.default_rng(5).integers(0, 256, (60, 68), dtype=np.uint8)
    write_labels(tmp_path / "in.zarr" / "raw", raw, (6, 4))
    ckpt = random_checkpoint(tiny_unet(2), tiny_predictor(1), (6, 4), NORM_UINT8, seed=4)
    model = str(save_checkpoint(tmp_path / "model.pt", ckpt))
    out = tmp_path / "out.zarr" / "pred"
    text = predict_volume(model, tmp_path / "in.zarr/raw", out, block_shape=(12, 12),
                          device="cpu", num_workers=2, dry_run=True, progress=False)
    assert not out.exists()
    # The real run's chunks are its blocks.
    predict_volume(model, tmp_path / "in.zarr/raw", out, block_shape=(12, 12), device="cpu",
                   progress=False)
    chunks = zarr.open_array(str(out / "s0"), mode="r").chunks[1:]
    blocks = math.prod(math.ceil(s / c) for s, c in zip(raw.shape, chunks, strict=True))
    lines = text.splitlines()
    assert lines[0] == "predict: plan (nothing was written)"
    assert lines[1] == f"  blocks               {blocks} of {tuple(chunks)} voxels"
    assert lines[3] == f"  output on disk       <= {_size(60 * 68 * 4)} (float32, 1 channel(s), " \
        "uncompressed)"
    assert "with 2 worker(s) (worker start-up" in lines[4]

    result = CliRunner().invoke(app, [
        "predict", model, str(tmp_path / "in.zarr/raw"), str(tmp_path / "o2.zarr/p"),
        "--device", "cpu", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("predict: plan (nothing was written)\n")
    assert "worker start-up 0 s" in result.output  # one worker in this process: none
    assert not (tmp_path / "o2.zarr").exists()


def test_dry_run_checks_the_input_like_a_run(tmp_path: Path) -> None:
    from innerdist.predict import predict_volume

    with pytest.raises(ValueError, match="precision 'bf16' is for prediction on a CUDA GPU"):
        predict_volume(tmp_path / "model.pt", tmp_path / "in.zarr/raw", tmp_path / "o.zarr/p",
                       device="cpu", precision="bf16", dry_run=True)


@pytest.mark.parametrize("mode", ["instances", "threshold"])
def test_segment_dry_run_writes_nothing(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    from test_segment import scene_2d, write_prediction

    from innerdist.cli import app
    from innerdist.segment import segment_volume

    pred = write_prediction(tmp_path / "in.zarr" / "pred",
                            scene_2d()[np.newaxis].astype(np.float32))  # 40 x 40
    out = tmp_path / "out.zarr" / "seg"
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the sample runs
    text = segment_volume(pred, out, mode=mode, block_shape=(16, 16), num_workers=1,
                          dry_run=True, progress=False)
    assert not out.exists() and not (tmp_path / "out.zarr").exists()
    assert list(temp.iterdir()) == []  # the sample's folder is gone
    lines = text.splitlines()
    assert lines[0] == "segment: plan (nothing was written)"
    assert lines[1] == "  blocks               9 of (16, 16) voxels"  # 3 x 3, edges shrunk
    # The sample: 2 x 2 whole blocks from the middle (the grid's first two here).
    assert lines[2].endswith("(measured on a sample of 4 block(s), (32, 32) voxels, through "
                             "every step)")
    assert lines[5].startswith("  steps                ")
    steps = [step.rsplit(" ", 2)[0] for step in lines[5].split(None, 1)[1].split(", ")]
    if mode == "threshold":
        assert lines[3] == f"  output on disk       <= {_size(40 * 40)} (uint8, 1 channel(s), " \
            "uncompressed)"
        assert steps == ["create", "threshold", "pyramid", "finish"]
    else:
        assert lines[3] == f"  output on disk       <= {_size(4 * 40 * 40 * 8)} (uint64, 1 " \
            "channel(s), with 3 intermediates while it runs, uncompressed)"
        assert steps == ["create", "fragments", "faces", "merge", "grow", "finalize", "write",
                         "clean-up", "pyramid", "finish"]
    assert len(lines) == 6  # no note: the sample's objects are all far below the flood limit
    assert "with 1 worker(s) (worker start-up 0 s" in lines[4]
    no_pyramid = segment_volume(pred, out, mode=mode, block_shape=(16, 16), dry_run=True,
                                progress=False, pyramid=False)
    assert "pyramid" not in no_pyramid.splitlines()[5]

    result = CliRunner().invoke(app, ["segment", pred, str(out), "--mode", mode,
                                      "--block-shape", "16,16", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("segment: plan (nothing was written)\n")
    assert not out.exists()
    assert list(temp.iterdir()) == []


# --- planning blocks and workers ------------------------------------------------------------


def test_planned_blocks_fit_the_budget_tile_the_volume_and_feed_the_workers() -> None:
    from innerdist.plan import BLOCKS_PER_WORKER, choose_block_shape

    rng = np.random.default_rng(0)
    for _ in range(200):
        dims = int(rng.integers(2, 4))
        volume = tuple(int(v) for v in rng.integers(1, 600, dims))
        tile = tuple(int(t) for t in rng.integers(4, 80, dims))
        margin = tuple(int(m) for m in rng.integers(0, 20, dims))
        workers = int(rng.integers(1, 5))
        budget = int(rng.integers(10**4, 10**9))
        block = choose_block_shape(volume, tile=tile, margin=margin, in_bytes_per_voxel=8,
                                   out_bytes_per_voxel=12, budget_bytes=budget,
                                   workers=workers, max_block_voxels=2**20)
        for b, t, v in zip(block, tile, volume, strict=True):
            assert b % t == 0 or b == v  # whole tiles, or the whole axis
            assert b <= max(v, t)
        grown = [min(max(b, t), v) for b, t, v in zip(block, tile, volume, strict=True)]
        one_tile = all(b <= t for b, t in zip(block, tile, strict=True))
        if not one_tile:  # the start (one tile per block) is kept even when it does not fit
            memory = math.prod(b + 2 * m for b, m in zip(grown, margin, strict=True)) * 8 \
                + math.prod(grown) * 12
            assert memory <= budget and math.prod(grown) <= 2**20
            blocks = math.prod(math.ceil(v / b) for v, b in zip(volume, block, strict=True))
            assert workers == 1 or blocks >= BLOCKS_PER_WORKER * workers


def test_a_bigger_budget_never_gives_smaller_blocks() -> None:
    from innerdist.plan import choose_block_shape

    sizes = [
        math.prod(choose_block_shape((300, 500, 700), tile=(32, 40, 40), margin=(8, 8, 8),
                                     in_bytes_per_voxel=8, out_bytes_per_voxel=12,
                                     budget_bytes=budget))
        for budget in (10**5, 10**6, 10**7, 10**8, 10**9)
    ]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_chunks_divide_planned_blocks() -> None:
    from innerdist.plan import chunk_shape_for

    assert chunk_shape_for((256, 256, 256), (64, 64, 64), max_voxels=64**3) == (64, 64, 64)
    assert chunk_shape_for((192, 120), (64, 40), max_voxels=3000) == (64, 40)
    assert chunk_shape_for((37, 45), (24, 12)) == (37, 45)  # small: the block itself


def test_segment_blocks_are_planned_for_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    import innerdist.plan
    from innerdist.segment import _BYTES_PER_VOXEL, _chunk_shape, _planned_block_shape

    monkeypatch.setattr(innerdist.plan, "_total_ram", lambda: 8 * 2**30)  # budget 2 GiB

    def planned(shape: tuple[int, ...], chunks: tuple[int, ...], workers: int = 1,
                channels: int = 1) -> tuple[int, ...]:
        return _planned_block_shape(shape, channels=channels, stored_chunks=chunks,
                                    workers=workers, cluster=False)

    def count(shape: tuple[int, ...], block: tuple[int, ...]) -> int:
        return math.prod(math.ceil(s / b) for s, b in zip(shape, block, strict=True))

    # One worker, a 2048^2 image (4 Mi voxels, 256 MiB at 64 B): one block.
    assert planned((2048, 2048), (2048, 2048)) == (2048, 2048)
    assert planned((2048, 2048), (100, 100)) == (2048, 2048)
    # 4 workers on 512^3: 4 blocks each at least, of whole 64^3 chunks.
    block = planned((512, 512, 512), (64, 64, 64), workers=4)
    assert count((512,) * 3, block) >= 16 and all(b % 64 == 0 for b in block)
    # Whole chunks where they allow 8 blocks for 2 workers ...
    assert planned((2048, 2048), (512, 512), workers=2) == (512, 1024)
    # ... else steps of 8 voxels: one 2048^2 chunk cannot feed 2 workers.
    block = planned((2048, 2048), (2048, 2048), workers=2)
    assert count((2048, 2048), block) >= 8 and all(b % 8 == 0 for b in block)
    # The memory budget: 2 GiB / 64 B = 32 Mi voxels, but the cap is 16 Mi (2**24) ...
    assert math.prod(planned((8192, 8192), (512, 512))) <= 2**24
    # ... and 8 channels hold 8 times as much: 4 Mi voxels.
    block = planned((8192, 8192), (512, 512), channels=8)
    assert math.prod(block) * 8 * _BYTES_PER_VOXEL <= 2 * 2**30
    # Ids are (channel, block) * 2**32 + local id: blocks stay far below 2**32 voxels, and
    # a 100k^3 volume (10**15 voxels) still has fewer than 2**32 blocks.
    block = planned((100_000,) * 3, (64, 64, 64), workers=64)
    assert math.prod(block) < 2**32 and count((100_000,) * 3, block) < 2**32
    # Output chunks divide the block and stay at most 512^2 / 64^3, the old fixed blocks.
    assert _chunk_shape((2048, 2048)) == (512, 512)
    assert _chunk_shape((192, 192, 256)) == (48, 48, 64)
    assert _chunk_shape((40, 40)) == (40, 40)


def test_segment_plans_fewer_larger_blocks_when_it_runs_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 workers that would not pay off: the job runs in this process with the blocks one
    worker gets, not with blocks cut for 2 workers; its chunks keep the pyramid levels."""
    from test_segment import write_prediction

    from innerdist.plan import STARTUP_ENV
    from innerdist.segment import segment_volume
    from innerdist.volumes import open_volume

    pred = np.zeros((1, 600, 600), np.float32)
    pred[0, 100:200, 100:300] = 0.9
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)  # chunks of 5
    monkeypatch.setenv(STARTUP_ENV, "60")  # a worker's start-up costs a minute
    out = segment_volume(path, tmp_path / "p.zarr" / "seg", num_workers=2, progress=False,
                         seed_dynamic=0)
    assert open_volume(out).attrs["innerdist_job"]["block_shape"] == [600, 600]
    assert zarr.open_array(str(Path(out) / "s0"), mode="r").chunks == (1, 200, 600)
    assert (Path(out) / "s1").exists()
    assert segment_volume(path, tmp_path / "p.zarr" / "dry", num_workers=2, dry_run=True,
                          progress=False, seed_dynamic=0).splitlines()[1] == \
        "  blocks               1 of (600, 600) voxels"


def test_segment_estimate_counts_a_start_up_for_each_step_with_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_segment import scene_2d, write_prediction

    import innerdist.plan
    from innerdist.plan import STARTUP_ENV
    from innerdist.segment import segment_volume

    pred = write_prediction(tmp_path / "in.zarr" / "pred",
                            scene_2d()[np.newaxis].astype(np.float32))  # 40 x 40
    monkeypatch.setenv(STARTUP_ENV, "0")  # keep the 2 workers asked for
    monkeypatch.setattr(innerdist.plan, "worker_startup_seconds", lambda modules: 10.0)
    text = segment_volume(pred, tmp_path / "o.zarr" / "s", block_shape=(16, 16),
                          num_workers=2, dry_run=True, progress=False, pyramid=False)
    steps = {}
    for step in text.splitlines()[5].split(None, 1)[1].split(", "):
        name, seconds, unit = step.rsplit(" ", 2)
        assert unit == "s"
        steps[name] = float(seconds)
    # daisy starts the workers of every blockwise pass anew; merge and finalize are serial.
    for name in ("fragments", "faces", "write"):
        assert 10.0 <= steps[name] < 11.0, text
    assert steps["merge"] < 1.0 and steps["finalize"] < 1.0
    assert "with 2 worker(s) (worker start-up 10 s" in text


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_segment_estimate_is_near_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int,
) -> None:
    """The dry run's estimate and the run of the same job agree within 2x either way (a
    generous bound: the machine may be shared; bench/scale.py measures the real ratio)."""
    from scipy import ndimage

    from innerdist.plan import STARTUP_ENV
    from innerdist.segment import segment_volume
    from innerdist.volumes import create_volume, mark_complete

    rng = np.random.default_rng(3)
    smooth = ndimage.gaussian_filter(rng.normal(size=(1024, 1024)), 4) * 6
    roi = Roi((0, 0), (1024, 1024))
    # Chunks like predict's (test_segment's helper writes chunks of 5, whose reads dominate).
    array = create_volume(tmp_path / "p.zarr" / "pred", roi=roi, voxel_size=(1, 1),
                          dtype=np.float32, num_channels=1, chunk_shape=(256, 256),
                          attrs={"innerdist_predictor": {"scale_factor": 10.0}})
    array[roi] = (0.99 * np.tanh(np.clip(smooth, 0, None)))[np.newaxis].astype(np.float32)
    mark_complete(array)
    path = str(tmp_path / "p.zarr" / "pred")
    monkeypatch.setenv(STARTUP_ENV, "0")  # keep the workers asked for
    kwargs = dict(block_shape=(256, 256), num_workers=workers, progress=False)
    text = segment_volume(path, tmp_path / "p.zarr" / "dry", dry_run=True, **kwargs)
    estimate = float(text.splitlines()[4].split()[3])  # "... wall time  12.3 s with ..."
    start = time.perf_counter()
    segment_volume(path, tmp_path / "p.zarr" / "seg", **kwargs)
    seconds = time.perf_counter() - start
    assert 0.5 <= estimate / seconds <= 2.0, (estimate, seconds, text)


def test_workers_are_capped_by_blocks_and_dropped_when_start_up_dominates() -> None:
    from innerdist.plan import choose_workers

    assert choose_workers(8, blocks=3, serial_seconds=None) == 3
    assert choose_workers(2, blocks=1, serial_seconds=1000.0) == 1
    # 2 workers: startup + T/2 <= 0.8 T  <=>  T >= startup / 0.3
    assert choose_workers(2, blocks=10, serial_seconds=16.0, startup_seconds=5.0) == 1
    assert choose_workers(2, blocks=10, serial_seconds=17.0, startup_seconds=5.0) == 2
    # Measured scaling wins over perfect scaling: threads already used the cores.
    assert choose_workers(2, blocks=10, serial_seconds=100.0, parallel_seconds=90.0,
                          startup_seconds=5.0) == 1
    assert choose_workers(2, blocks=10, serial_seconds=100.0, parallel_seconds=70.0,
                          startup_seconds=5.0) == 2
    with pytest.raises(ValueError, match="requested workers must be >= 1"):
        choose_workers(0, blocks=1, serial_seconds=None)


def test_memory_sizes_and_budget() -> None:
    from innerdist.plan import memory_budget, parse_bytes

    assert parse_bytes("1.5K") == 1536 and parse_bytes(" 2 GiB ") == 2 * 2**30
    for bad in ("", "G", "-1G", "nanM", "4X"):
        with pytest.raises(ValueError, match="memory size must be a positive number"):
            parse_bytes(bad)
    assert memory_budget(4, 1000) == 1000
    assert memory_budget(2) * 2 <= memory_budget(1) + 1
    with pytest.raises(ValueError, match="memory budget must be a positive number of bytes"):
        memory_budget(1, 0)


def test_small_jobs_run_in_process_and_workers_never_outnumber_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_segment import scene_2d, write_prediction
    from test_targets import write_labels

    import innerdist.blockwise
    from innerdist.checkpoint import random_checkpoint, save_checkpoint
    from innerdist.plan import STARTUP_ENV
    from innerdist.predict import predict_volume
    from innerdist.segment import segment_volume

    used: list[tuple[str, int]] = []
    real = innerdist.blockwise.run_blockwise

    def spy(name: str, **kwargs: object) -> None:
        used.append((name, kwargs["num_workers"]))  # type: ignore[arg-type]
        real(name, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(innerdist.blockwise, "run_blockwise", spy)
    raw = np.random.default_rng(5).integers(0, 256, (60, 68), dtype=np.uint8)
    write_labels(tmp_path / "in.zarr" / "raw", raw, (6, 4))
    ckpt = random_checkpoint(tiny_unet(2), tiny_predictor(1), (6, 4), NORM_UINT8, seed=4)
    model = str(save_checkpoint(tmp_path / "model.pt", ckpt))
    pred = write_prediction(tmp_path / "in.zarr" / "pred",
                            scene_2d()[np.newaxis].astype(np.float32))  # 40 x 40

    monkeypatch.setenv(STARTUP_ENV, "5")  # a second of work is not worth a worker
    predict_volume(model, tmp_path / "in.zarr/raw", tmp_path / "o.zarr/p", device="cpu",
                   block_shape=(12, 12), num_workers=2, progress=False)
    segment_volume(pred, tmp_path / "o.zarr/s", block_shape=(16, 16), num_workers=2,
                   progress=False, pyramid=False)
    assert {w for _, w in used} == {1}, used

    used.clear()
    monkeypatch.setenv(STARTUP_ENV, "0")  # free workers: as many as asked, one per block
    segment_volume(pred, tmp_path / "o.zarr/s2", mode="threshold", block_shape=(40, 24),
                   num_workers=4, progress=False, pyramid=False)
    assert used == [("segment-threshold", 2)]  # 2 blocks


def test_cli_memory_budget_is_checked(tmp_path: Path) -> None:
    from innerdist.cli import app

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "m.pt"), "x.zarr/raw",
                                      "y.zarr/p", "--memory-budget", "4X"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "memory size must be a positive number" in result.output and "'4X'" in result.output
