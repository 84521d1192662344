import re

import numpy as np
import pytest
from funlib.geometry import Roi
from labelgen import random_instances
from typer.testing import CliRunner

from innerdist.cli import app
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.targets import compute_targets
from innerdist.volumes import create_volume, is_complete, mark_complete, open_volume

runner = CliRunner()


def write_labels(path, labels, voxel_size, offset=None, channel_axis=False):
    dims = len(voxel_size)
    offset = offset or (0,) * dims
    spatial = labels.shape[-dims:]
    roi = Roi(offset, tuple(s * v for s, v in zip(spatial, voxel_size)))
    a = create_volume(path, roi=roi, voxel_size=voxel_size, dtype=labels.dtype,
                      num_channels=labels.shape[0] if channel_axis else None)
    a[roi] = labels
    mark_complete(a)
    return a


@pytest.mark.parametrize(
    ("shape", "voxel", "block", "workers"),
    [((30, 70, 50), (8, 2, 2), (8, 16, 16), 1), ((90, 70), (4, 4), (32, 24), 2)],
)
def test_blockwise_equals_whole_volume(tmp_path, shape, voxel, block, workers):
    rng = np.random.default_rng(3)
    labels = random_instances(rng, shape, num_seeds=25)
    write_labels(tmp_path / "gt.zarr" / "labels", labels, voxel, offset=tuple(voxel))
    scale = 4.0 * max(voxel)
    out = compute_targets(tmp_path / "gt.zarr" / "labels", tmp_path / "gt.zarr" / "t",
                          scale_factor=scale, block_shape=block, num_workers=workers,
                          progress=False)
    result = open_volume(out)
    assert is_complete(result)
    assert result.voxel_size == voxel and result.roi.offset == voxel
    assert result.axis_names[0] == "c^" and result.shape == (1, *shape)
    got = result[result.roi][0]
    p = InnerDistancePredictor(["labels"], scale)
    want = p.process(labels, voxel, "tanh", scale)
    d = p.process(labels, voxel)
    assert np.abs(got - want).max() <= p.epsilon
    close = d <= p.max_distance
    np.testing.assert_allclose(got[close], want[close], atol=1e-6)
    assert result.attrs["innerdist_predictor"]["channels"] == ["labels"]


def test_two_channels_and_no_boundary_blocks(tmp_path):
    labels = np.zeros((2, 40, 40), np.uint8)
    labels[0] = 1  # one object filling the volume: no boundary anywhere
    labels[1, 5:35, 5:35] = 1
    write_labels(tmp_path / "gt.zarr" / "l", labels, (1, 1), channel_axis=True)
    out = compute_targets(tmp_path / "gt.zarr" / "l", tmp_path / "gt.zarr" / "t",
                          scale_factor=3.0, channels=["a", "b"], block_shape=(10, 10),
                          progress=False)
    got = open_volume(out)[Roi((0, 0), (40, 40))]
    want = InnerDistancePredictor(["a", "b"], 3.0).process(labels, (1, 1), "tanh", 3.0)
    # channel 0 has no boundary: the whole volume's value, exactly
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], atol=0.05)


def test_resume_after_interruption(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    labels = random_instances(rng, (40, 40), num_seeds=10)
    write_labels(tmp_path / "gt.zarr" / "l", labels, (1, 1))
    import innerdist.inner_distance as module

    original = module.InnerDistancePredictor.process
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the third block
        return original(self, *args, **kwargs)

    monkeypatch.setattr(module.InnerDistancePredictor, "process", flaky)
    kwargs = dict(scale_factor=2.0, block_shape=(10, 10), progress=False)
    with pytest.raises(KeyboardInterrupt):
        compute_targets(tmp_path / "gt.zarr" / "l", tmp_path / "gt.zarr" / "t", **kwargs)
    assert not is_complete(open_volume(tmp_path / "gt.zarr" / "t"))
    compute_targets(tmp_path / "gt.zarr" / "l", tmp_path / "gt.zarr" / "t", **kwargs)
    assert calls["n"] == 16 + 1  # 2 finished blocks were not recomputed; 1 retried
    result = open_volume(tmp_path / "gt.zarr" / "t")
    assert is_complete(result)
    p = InnerDistancePredictor(["l"], 2.0)
    np.testing.assert_allclose(result[result.roi][0],
                               original(p, labels, (1, 1), "tanh", 2.0), atol=0.05)


def test_cli_success(tmp_path):
    write_labels(tmp_path / "gt.zarr" / "l", random_instances(np.random.default_rng(0), (20, 20)),
                 (2, 2))
    result = runner.invoke(app, ["targets", str(tmp_path / "gt.zarr" / "l"),
                                 str(tmp_path / "gt.zarr" / "t"), "--scale-factor", "4"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert is_complete(open_volume(tmp_path / "gt.zarr" / "t"))


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["missing.zarr/l", "o.zarr/t"], "no container"),
        ("labels", ["gt.zarr/nope", "o.zarr/t"], "dataset 'nope' not found"),
        ("float", ["gt.zarr/f", "o.zarr/t"], "dtype float32"),
        ("4d", ["gt.zarr/d4", "o.zarr/t"], "4 spatial axes .* expected 2 or 3"),
        ("labels", ["gt.zarr/l", "o.zarr/t", "--channels", "a", "--channels", "b"],
         "2 channel names"),
        ("exists", ["gt.zarr/l", "gt.zarr/l"], "is the labels .* would destroy an input"),
        ("labels", ["gt.zarr/l", "o.zarr/t", "--block-shape", "4,x"], "comma-separated"),
        ("labels", ["gt.zarr/l", "o.zarr/t", "--block-shape", "4,4,4"], "block shape"),
        ("labels", ["gt.zarr", "o.zarr/t"], "no dataset inside"),
    ],
)
def test_cli_bad_input(tmp_path, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    if setup in ("labels", "exists"):
        write_labels(tmp_path / "gt.zarr" / "l", np.ones((8, 8), np.uint8), (1, 1))
    if setup == "float":
        write_labels(tmp_path / "gt.zarr" / "f", np.ones((8, 8), np.float32), (1, 1))
    if setup == "4d":
        from funlib.persistence import prepare_ds

        a = prepare_ds(tmp_path / "gt.zarr" / "d4", shape=(2, 2, 8, 8), voxel_size=(1, 1, 1, 1),
                       dtype=np.uint8, mode="w")
        a[a.roi] = 1
    result = runner.invoke(app, ["targets", *args, "--scale-factor", "2"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("innerdist targets: error:")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.zarr" / "t").exists()
