"""Tests of innerdist.validate: the sweep (grid, refinement, edge warnings), the smoothed
selection of checkpoint and post-processing, scoring a prediction, and validate() itself."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import innerdist.predict
from innerdist.config import ValidationConfig, criterion_direction, criterion_iou_thresholds
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.metrics import instance_scores
from innerdist.validate import (
    SWEPT,
    Best,
    ValidationVolume,
    criterion_value,
    edge_warnings,
    grid_points,
    min_size_voxels,
    refinement,
    score_prediction,
    scores_per_iteration,
    select_best,
    smoothed_scores,
    validate,
)

PLAIN = {"smooth_levels": False, "smooth_checkpoints": 1}


def row(iteration: int, volume: str, fg: float, seed: float, **scores: float) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "volume": volume,
        "foreground_level": fg,
        "seed_level": seed,
        "min_size": 0.0,
        **scores,
    }


def squares() -> np.ndarray:
    """Two touching squares and a separate one, ``(1, 24, 24)``."""
    labels = np.zeros((1, 24, 24), np.uint64)
    labels[0, 2:10, 2:10] = 1
    labels[0, 2:10, 10:18] = 2
    labels[0, 14:22, 4:12] = 3
    return labels


# --- selection ---------------------------------------------------------------------------


def test_select_best_picks_the_best_mean_over_volumes() -> None:
    f1, are = "instances.f1_score@0.5", "instances.adapted_rand_error"
    rows = [
        row(10, "a", 0.1, 0.5, **{f1: 0.9, are: 0.3}),
        row(10, "b", 0.1, 0.5, **{f1: 0.1, are: 0.3}),  # mean f1 0.5
        row(10, "a", 0.1, 0.7, **{f1: 0.6, are: 0.2}),
        row(10, "b", 0.1, 0.7, **{f1: 0.6, are: 0.2}),  # mean f1 0.6
        row(20, "a", 0.1, 0.5, **{f1: 0.8, are: 0.25}),
        row(20, "b", 0.1, 0.5, **{f1: 0.7, are: 0.25}),  # mean f1 0.75 <- best
        row(20, "a", 0.2, 0.7, **{f1: 0.4, are: 0.1}),
        row(20, "b", 0.2, 0.7, **{f1: 0.4, are: float("nan")}),  # NaN skipped: mean 0.1
    ]
    best = select_best(rows, [f1, are], **PLAIN)
    params = {"foreground_level": 0.1, "seed_level": 0.5, "min_size": 0.0}
    assert best[f1] == Best(f1, 20, pytest.approx(0.75), params, pytest.approx(0.75))
    # An error score: the smallest wins.
    assert best[are].iteration == 20 and best[are].score == pytest.approx(0.1)
    assert (best[are].foreground_level, best[are].seed_level) == (0.2, 0.7)
    assert scores_per_iteration(rows, f1) == ([10, 20], [pytest.approx(0.6), pytest.approx(0.75)])
    assert scores_per_iteration(rows, are) == ([10, 20], [pytest.approx(0.2), pytest.approx(0.1)])
    assert select_best([], [f1]) == {}


def test_select_best_breaks_ties_by_earliest_iteration_then_sweep_order() -> None:
    rows = [
        row(30, "a", 0.1, 0.5, **{"binary.dice": 0.8}),
        row(10, "a", 0.2, 0.5, **{"binary.dice": 0.8}),
        row(10, "a", 0.1, 0.5, **{"binary.dice": 0.8}),
        row(20, "a", 0.1, 0.5, **{"binary.dice": 0.7}),
    ]
    for kwargs in (PLAIN, {}):
        best = select_best(rows, ["binary.dice"], **kwargs)["binary.dice"]
        assert (best.iteration, best.foreground_level) == (10, 0.2)
    with pytest.raises(ValueError, match="has no value for 'binary.jaccard'"):
        select_best(rows, ["binary.jaccard"])
    with pytest.raises(ValueError, match="smooth_checkpoints must be an integer >= 1"):
        select_best(rows, ["binary.dice"], smooth_checkpoints=0)


def test_smoothing_over_levels_prefers_a_plateau_to_a_lone_spike() -> None:
    dice = "binary.dice"
    # One seed level; foreground levels 0.1..0.5: a spike at 0.1, a plateau around 0.4.
    values = {0.1: 0.9, 0.2: 0.3, 0.3: 0.75, 0.4: 0.8, 0.5: 0.75}
    rows = [row(1, "a", fg, 0.6, **{dice: v}) for fg, v in values.items()]
    assert select_best(rows, [dice], **PLAIN)[dice].foreground_level == 0.1
    best = select_best(rows, [dice], smooth_levels=True, smooth_checkpoints=1)[dice]
    assert best.foreground_level == 0.4
    assert best.score == 0.8  # the measured value; the smoothed one chose it
    assert best.selection_score == pytest.approx((0.75 + 2 * 0.8 + 0.75) / 4)


def test_smoothed_scores_by_hand_in_two_dimensions() -> None:
    # (fg, seed, min_size) on a 2 x 2 grid minus one corner, one min_size: neighbours
    # along the two swept axes only, a missing neighbour counting as the point itself.
    scores = {(0.1, 0.5, 0.0): 1.0, (0.1, 0.7, 0.0): 0.4, (0.2, 0.5, 0.0): 0.1}
    assert smoothed_scores(scores) == {
        (0.1, 0.5, 0.0): pytest.approx(((1 + 2 + 0.1) / 4 + (1 + 2 + 0.4) / 4) / 2),
        (0.1, 0.7, 0.0): pytest.approx(((0.4 + 0.8 + 0.4) / 4 + (1 + 0.8 + 0.4) / 4) / 2),
        (0.2, 0.5, 0.0): pytest.approx(((1 + 0.2 + 0.1) / 4 + (0.1 + 0.2 + 0.1) / 4) / 2),
    }
    assert smoothed_scores({(0.1,): 0.3}) == {(0.1,): 0.3} and smoothed_scores({}) == {}


def test_smoothing_over_checkpoints_is_trailing() -> None:
    dice = "binary.dice"
    # Iteration 20 is a lucky outlier between two poor validations; 40 and 50 are steady.
    per_iteration = {10: 0.5, 20: 0.95, 30: 0.5, 40: 0.8, 50: 0.8}
    rows = [row(it, "a", 0.1, 0.6, **{dice: v}) for it, v in per_iteration.items()]
    assert select_best(rows, [dice], **PLAIN)[dice].iteration == 20
    best = select_best(rows, [dice], smooth_levels=False, smooth_checkpoints=2)[dice]
    assert best.iteration == 50 and best.selection_score == pytest.approx(0.8)
    # Trailing: adding later validations never makes an older iteration the choice.
    for last in range(1, len(rows) + 1):
        chosen = select_best(rows[:last], [dice], smooth_checkpoints=3)[dice].iteration
        assert chosen in {r["iteration"] for r in rows[:last]}
        earlier = select_best(rows[: last - 1], [dice], smooth_checkpoints=3) if last > 1 else {}
        if dice in earlier and chosen != earlier[dice].iteration:
            assert chosen == rows[last - 1]["iteration"]


def test_min_size_and_postprocessing_params() -> None:
    assert min_size_voxels(0, (40, 8, 8)) == 0
    assert min_size_voxels(2560, (40, 8, 8)) == 1
    assert min_size_voxels(2561, (40, 8, 8)) == 2
    assert min_size_voxels(100, (5, 5)) == 4
    with pytest.raises(ValueError, match="min_size must be >= 0"):
        min_size_voxels(-1, (5, 5))
    b = Best("binary.dice", 5, 0.9, {"foreground_level": 0.1, "seed_level": 0.6, "min_size": 300})
    assert b.postprocessing((10, 10)) == {"foreground_level": 0.1, "seed_level": 0.6, "min_size": 3}
    assert b.to_dict() == {
        "iteration": 5, "score": 0.9, "foreground_level": 0.1, "seed_level": 0.6,
        "min_size": 300, "selection_score": None,
    }


# --- the sweep ---------------------------------------------------------------------------


def test_grid_points_skip_impossible_pairs() -> None:
    points = grid_points({"foreground_level": [0.1, 0.5], "seed_level": [0.3, 0.7],
                          "min_size": [0.0, 9.0]})
    assert [tuple(p.values()) for p in points] == [
        (0.1, 0.3, 0.0), (0.1, 0.3, 9.0), (0.1, 0.7, 0.0), (0.1, 0.7, 9.0),
        (0.5, 0.7, 0.0), (0.5, 0.7, 9.0),
    ]


def test_refinement_midpoints_edges_and_ranges() -> None:
    def tried(fgs: list[float], seeds: list[float]) -> list[dict[str, float]]:
        return grid_points({"foreground_level": fgs, "seed_level": seeds})

    # Inside the grid: the midpoints to both neighbours, on each axis.
    new = refinement({"foreground_level": 0.1, "seed_level": 0.6},
                     tried([0.05, 0.1, 0.2], [0.4, 0.6, 0.8]))
    assert [(p["foreground_level"], p["seed_level"]) for p in new] == [
        (0.075, 0.6), (0.15, 0.6), (0.1, 0.5), (0.1, 0.7)
    ]
    # At the top edge: one step beyond; at the top of [0, 1), half way to 1 instead.
    new = refinement({"foreground_level": 0.2, "seed_level": 0.8},
                     tried([0.05, 0.1, 0.2], [0.4, 0.6, 0.8]))
    assert [(p["foreground_level"], p["seed_level"]) for p in new] == [
        (0.15, 0.8), (0.3, 0.8), (0.2, 0.7), (0.2, 1.0 - 0.1)
    ]
    # At the bottom edge 0: no room below; a step below 0.05 would be 0, which is allowed.
    new = refinement({"foreground_level": 0.0, "seed_level": 0.5}, tried([0.0, 0.1], [0.5]))
    assert [p["foreground_level"] for p in new] == [0.05]
    new = refinement({"foreground_level": 0.05, "seed_level": 0.5}, tried([0.05, 0.1], [0.5]))
    assert [p["foreground_level"] for p in new] == [0.0, 0.075]
    # min_size has no upper bound; a pair that would put foreground above seed is skipped.
    new = refinement({"foreground_level": 0.3, "seed_level": 0.4, "min_size": 100.0},
                     [{"foreground_level": f, "seed_level": 0.4, "min_size": m}
                      for f in (0.2, 0.3) for m in (0.0, 100.0)])
    assert [tuple(p.values()) for p in new] == [(0.25, 0.4, 100.0), (0.3, 0.4, 50.0),
                                                (0.3, 0.4, 200.0)]
    # Nothing to refine on single-valued axes; points tried already are not repeated.
    assert refinement({"foreground_level": 0.1, "seed_level": 0.5}, tried([0.1], [0.5])) == []
    twice = tried([0.05, 0.075, 0.1, 0.15], [0.6])
    assert refinement({"foreground_level": 0.1, "seed_level": 0.6}, twice) == [
        {"foreground_level": 0.0875, "seed_level": 0.6},
        {"foreground_level": 0.125, "seed_level": 0.6},
    ]


def test_edge_warnings() -> None:
    sweep = {"foreground_level": [0.05, 0.1, 0.2], "seed_level": [0.4, 0.6, 0.8],
             "min_size": [0.0]}
    assert edge_warnings({"foreground_level": 0.1, "seed_level": 0.6, "min_size": 0.0},
                         sweep) == []
    lines = edge_warnings({"foreground_level": 0.3, "seed_level": 0.4, "min_size": 0.0}, sweep)
    assert lines == [
        "foreground_level: the best value 0.3 is at the top of the swept grid [0.05, 0.1, 0.2] "
        "(refinement went beyond it)",
        "seed_level: the best value 0.4 is at the bottom of the swept grid [0.4, 0.6, 0.8]",
    ]


# --- criteria ----------------------------------------------------------------------------


def test_iou_range_criteria() -> None:
    assert criterion_iou_thresholds("instances.f1_score@0.5:0.9") == (
        0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9
    )
    assert criterion_iou_thresholds("instances.panoptic_quality@0.75") == (0.75,)
    assert criterion_direction("instances.f1_score@0.5:0.9") == "max"
    for bad in ("instances.f1_score@0.5:0.93", "instances.f1_score@0.9:0.5"):
        with pytest.raises(ValueError, match="IoU range"):
            criterion_direction(bad)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        criterion_direction("instances.f1_score@0:0.5")
    assert ValidationConfig().criteria == ["instances.f1_score@0.5:0.9"]


def test_criterion_value_reads_the_metric_dicts() -> None:
    binary = {"dice": 0.5}
    inst = {
        "voi": 1.5,
        "matching": [
            {"iou_threshold": 0.5, "f1_score": 0.25, "panoptic_quality": 0.2},
            {"iou_threshold": 0.55, "f1_score": 0.75, "panoptic_quality": 0.6},
        ],
    }
    assert criterion_value("binary.dice", binary, inst) == 0.5
    assert criterion_value("instances.voi", binary, inst) == 1.5
    assert criterion_value("instances.f1_score@0.5", binary, inst) == 0.25
    assert criterion_value("instances.f1_score@0.5:0.55", binary, inst) == 0.5
    assert criterion_value("instances.panoptic_quality@0.55", binary, inst) == 0.6
    with pytest.raises(ValueError, match="no matching at IoU 0.7"):
        criterion_value("instances.f1_score@0.7", binary, inst)
    with pytest.raises(ValueError, match="no matching at IoU 0.6"):
        criterion_value("instances.f1_score@0.5:0.6", binary, inst)
    with pytest.raises(ValueError, match="needs binary scores"):
        criterion_value("binary.dice", None, inst)
    with pytest.raises(ValueError, match="needs instance scores"):
        criterion_value("instances.voi", binary, None)


# --- scoring a prediction ----------------------------------------------------------------


def test_score_prediction_of_a_perfect_prediction() -> None:
    labels = squares()
    pred = InnerDistancePredictor(["a"], 2.0).process(labels, (1, 1), "tanh", 2.0)
    config = ValidationConfig(
        foreground_levels=[0.05, 0.5],
        seed_levels=[0.9, 0.99],
        criteria=["instances.f1_score@0.5", "binary.dice", "instances.voi",
                  "instances.f1_score@0.5:0.9"],
    )
    rows = score_prediction(pred, labels, (1, 1), config)
    assert [(r["foreground_level"], r["seed_level"]) for r in rows] == [
        (0.05, 0.9), (0.05, 0.99), (0.5, 0.9), (0.5, 0.99)
    ]
    perfect = rows[0]
    assert perfect["instances.f1_score@0.5"] == 1.0
    assert perfect["instances.f1_score@0.5:0.9"] == 1.0
    assert perfect["binary.dice"] == 1.0
    assert perfect["instances.voi"] == pytest.approx(0.0, abs=1e-9)
    # No voxel exceeds 0.99 (the squares are 8 wide: d <= 4, tanh(2) = 0.964): no seeds.
    assert rows[1]["instances.f1_score@0.5"] == 0.0
    # Foreground 0.5 drops the outer ring: dice < 1, the same for both seed levels, and
    # the shrunken objects lose the high IoU thresholds first.
    assert rows[2]["binary.dice"] < 1.0
    assert rows[2]["binary.dice"] == rows[3]["binary.dice"]
    assert rows[2]["instances.f1_score@0.5:0.9"] < rows[2]["instances.f1_score@0.5"]
    # A mask hiding object 3 changes nothing for a perfect prediction.
    mask = np.ones((24, 24), bool)
    mask[12:, :] = False
    assert score_prediction(pred, labels, (1, 1), config, mask=mask)[0] == perfect
    # Points off the grid are scored as asked.
    (off,) = score_prediction(pred, labels, (1, 1), config,
                              points=[{"foreground_level": 0.3, "seed_level": 0.9}])
    assert (off["foreground_level"], off["seed_level"]) == (0.3, 0.9)
    # min_size sweeps: 64-voxel squares survive 64 (voxel size 1: world = voxels), not 65.
    swept = score_prediction(
        pred, labels, (1, 1), config.model_copy(update={"min_size": [0.0, 64.0, 65.0]})
    )
    assert [(r["foreground_level"], r["seed_level"], r["min_size"]) for r in swept[:3]] == [
        (0.05, 0.9, 0.0), (0.05, 0.9, 64.0), (0.05, 0.9, 65.0)
    ]
    assert [r["instances.f1_score@0.5"] for r in swept[:3]] == [1.0, 1.0, 0.0]
    assert swept[2]["binary.dice"] == 1.0  # the thresholded mask keeps every object
    with pytest.raises(ValueError, match="must both be"):
        score_prediction(pred[0], labels, (1, 1), config)
    with pytest.raises(ValueError, match="mask shape"):
        score_prediction(pred, labels, (1, 1), config, mask=mask[:5])


def test_min_size_sweep_equals_segment_min_size() -> None:
    # Bumps of many sizes, some touching: the swept filter must score exactly like
    # segment.instances(min_size_voxels=...).
    from innerdist.segment import instances

    rng = np.random.default_rng(3)
    labels = np.zeros((1, 40, 40), np.uint64)
    for i in range(14):
        y, x = rng.integers(0, 36, 2)
        h, w = rng.integers(2, 9, 2)
        labels[0, y : y + h, x : x + w] = i + 1
    pred = InnerDistancePredictor(["a"], 2.0).process(labels, (4, 4), "tanh", 8.0)
    pred = np.clip(pred + rng.normal(0, 0.05, pred.shape).astype(np.float32), 0, 0.999)
    config = ValidationConfig(
        foreground_levels=[0.1], seed_levels=[0.5], min_size=[0.0, 80.0, 250.0, 600.0],
        criteria=["instances.f1_score@0.5", "instances.voi", "instances.adapted_rand_error"],
    )
    rows = score_prediction(pred, labels, (4, 4), config)
    for r in rows:
        seg = instances(pred[0], foreground_level=0.1, seed_level=0.5,
                        min_size_voxels=min_size_voxels(r["min_size"], (4, 4)))
        expected = instance_scores(seg, labels[0], iou_thresholds=[0.5])
        assert r["instances.f1_score@0.5"] == expected["matching"][0]["f1_score"]
        assert r["instances.voi"] == pytest.approx(expected["voi"], abs=1e-12)
        assert r["instances.adapted_rand_error"] == pytest.approx(
            expected["adapted_rand_error"], abs=1e-12
        )
    assert len({r["instances.voi"] for r in rows}) > 1  # the sizes did make a difference


# --- validate(): grid, refinement, warning -----------------------------------------------


def test_validate_refines_beyond_the_grid_edge_and_warns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from funlib.geometry import Coordinate, Roi

    labels = squares()
    target = InnerDistancePredictor(["a"], 2.0).process(labels, (1, 1), "tanh", 2.0)
    # The network is not under test: "predict" returns the exact target.
    monkeypatch.setattr(innerdist.predict, "predict_array", lambda *a, **k: target)
    volume = ValidationVolume(
        name="v", raw=np.zeros((1, 24, 24), np.float32), labels=labels, mask=None,
        roi=Roi((0, 0), (24, 24)), read_roi=Roi((0, 0), (24, 24)),
        voxel_size=Coordinate(1, 1),
    )
    # The exact target is best segmented at a low foreground level: the grid's bottom.
    config = ValidationConfig(foreground_levels=[0.4, 0.6, 0.8], seed_levels=[0.9],
                              refine=2)
    with pytest.warns(RuntimeWarning, match="foreground_level: the best value .* bottom"):
        rows = validate(None, [volume], config, iteration=7)  # type: ignore[arg-type]
    fgs = [r["foreground_level"] for r in rows]
    assert fgs[:3] == [0.4, 0.6, 0.8]  # the grid first
    assert 0.2 in fgs and 0.5 in fgs  # one step beyond the edge, and the midpoint
    assert len(fgs) == len(set(fgs)) and min(fgs) < 0.2  # the second round went further
    assert all(r["iteration"] == 7 and r["volume"] == "v" for r in rows)
    # Every refined row is exactly what score_prediction gives at that point.
    points = [{"foreground_level": f, "seed_level": 0.9, "min_size": 0.0} for f in fgs]
    again = score_prediction(target, labels, (1, 1), config, points=points)
    assert [r[config.criteria[0]] for r in rows] == [r[config.criteria[0]] for r in again]
    best = select_best(rows, config.criteria)[config.criteria[0]]
    assert best.foreground_level < 0.4 and best.score == 1.0
    # Refinement off and a best point inside the grid: the grid only, no warning. (A
    # background at 0.07 makes 0.05 flood everything, 0.5 shrinks the objects.)
    noisy = np.where(target == 0, np.float32(0.07), target)
    monkeypatch.setattr(innerdist.predict, "predict_array", lambda *a, **k: noisy)
    quiet = ValidationConfig(foreground_levels=[0.05, 0.1, 0.5], seed_levels=[0.9], refine=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = validate(None, [volume], quiet, iteration=1)  # type: ignore[arg-type]
    assert [r["foreground_level"] for r in rows] == [0.05, 0.1, 0.5]
    assert validate(None, [], config, iteration=1) == []  # type: ignore[arg-type]


def test_the_sweep_covers_seed_dynamics_when_the_scale_is_known() -> None:
    # Two touching squares and a separate one; the prediction is their exact target. No
    # voxel exceeds 0.99 (the squares are 8 wide: d <= 4, tanh(2) = 0.964), so level seeds
    # at 0.99 find nothing; dynamic seeds (world units) find every square.
    labels = np.zeros((1, 24, 24), np.uint64)
    labels[0, 2:10, 2:10] = 1
    labels[0, 2:10, 10:18] = 2
    labels[0, 14:22, 4:12] = 3
    pred = InnerDistancePredictor(["a"], 2.0).process(labels, (1, 1), "tanh", 2.0)
    config = ValidationConfig(foreground_levels=[0.05], seed_levels=[0.99],
                              seed_dynamics=[0.5, 1.0], criteria=["instances.f1_score@0.5"])
    # Without the tanh scale: level seeds only.
    rows = score_prediction(pred, labels, (1, 1), config)
    assert [(r["seed_dynamic"], r["instances.f1_score@0.5"]) for r in rows] == [(0.0, 0.0)]
    rows = score_prediction(pred, labels, (1, 1), config, scale=2.0)
    assert [(r["seed_dynamic"], r["instances.f1_score@0.5"]) for r in rows] == [
        (0.5, 1.0), (1.0, 1.0)
    ]
    # The default dynamic is one voxel of the finest axis; the grid names every parameter.
    assert ValidationConfig().sweep((40, 8, 8))["seed_dynamic"] == [8.0]
    assert ValidationConfig().sweep()["seed_dynamic"] == [0.0]
    assert set(config.sweep((1, 1))) == set(SWEPT)
    with pytest.raises(ValueError, match="need the prediction's tanh scale"):
        score_prediction(pred, labels, (1, 1), config,
                         points=[{"foreground_level": 0.05, "seed_level": 0.99,
                                  "min_size": 0.0, "seed_dynamic": 1.0}])
