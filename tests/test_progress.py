"""Progress: tqdm on a terminal, plain periodic lines otherwise (logs, pipes)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from funlib.geometry import Coordinate, Roi

import innerdist.progress as progress_module
from innerdist.progress import BlockProgress, Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", c)
    return c


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.4, 60, 230, 3599, 3600, 3725)] == [
        "0s", "59s", "1m00s", "3m50s", "59m59s", "1h00m", "1h02m"
    ]


def test_lines_every_interval_with_rate_and_eta(clock: Clock) -> None:
    out = io.StringIO()
    with Progress(600, "train", "it", initial=100, stream=out, interval=10) as bar:
        for _ in range(20):  # 20 iterations in 9.5 s: no line yet
            clock.now += 0.475
            bar.update()
        assert out.getvalue() == ""
        clock.now += 0.5  # 10 s since the start: 21 done at 2.1 it/s
        bar.set_postfix(loss="0.0123")
        bar.update()
        assert out.getvalue() == "train: 121/600 iterations, 2.1 it/s, eta 3m48s, loss 0.0123\n"
        clock.now += 5
        bar.update()  # within the interval: nothing
        assert out.getvalue().count("\n") == 1
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("train: 122/600 iterations, ") and "eta" in lines[-1]
    assert "\r" not in out.getvalue()


def test_final_line_and_units(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(4, "predict", "block", stream=out)
    clock.now += 8
    bar.update(4)
    bar.close()
    bar.close()  # once only
    assert out.getvalue() == "predict: 4/4 blocks, 0.5 block/s, took 8s\n"


def test_plural_of_batch(clock: Clock) -> None:
    out = io.StringIO()
    with Progress(2, "segment-grow", "batch", stream=out) as bar:
        clock.now += 1
        bar.update(2)
    assert out.getvalue().startswith("segment-grow: 2/2 batches, 2 batch/s")


def test_disabled_or_nothing_done_prints_nothing(clock: Clock) -> None:
    out = io.StringIO()
    with Progress(5, "x", stream=out, enabled=False) as bar:
        clock.now += 60
        bar.update(5)
    with Progress(5, "y", initial=5, stream=out):  # resumed with nothing left
        pass
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar() -> None:
    out = io.StringIO()
    with Progress(3, "train", stream=out, terminal=True) as bar:
        bar.update(3)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_block_progress_observer(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    observer = BlockProgress(stream=out, interval=1)

    def state(done: int) -> dict[str, SimpleNamespace]:
        return {"predict": SimpleNamespace(total_block_count=8, completed_count=done)}

    observer.on_start(state(2))  # 2 done before (resumed)
    clock.now += 2
    observer.on_progress(state(6))
    observer.on_finish(state(8))
    assert out.getvalue().splitlines() == [
        "predict: 6/8 blocks, 2 block/s, eta 1s",
        "predict: 8/8 blocks, 3 block/s, took 2s",
    ]


def test_blockwise_jobs_report_through_it(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from innerdist.blockwise import run_blockwise

    seen = []
    run_blockwise(
        "job",
        total_roi=Roi((0, 0), (8, 8)),
        block_shape=Coordinate(4, 4),
        context=Coordinate(0, 0),
        process=lambda read, write: seen.append(write),
        tracking_dir=tmp_path / "t",
    )
    assert len(seen) == 4
    err = capsys.readouterr().err
    assert "job: 4/4 blocks" in err and "\r" not in err

    # Resumed with nothing left: the position is complete, nothing is printed as done now.
    run_blockwise(
        "job",
        total_roi=Roi((0, 0), (8, 8)),
        block_shape=Coordinate(4, 4),
        context=Coordinate(0, 0),
        process=lambda read, write: seen.append(write),
        tracking_dir=tmp_path / "t",
    )
    assert len(seen) == 4 and capsys.readouterr().err == ""


def test_skipped_steps_move_the_position_not_the_rate(clock: Clock) -> None:
    out = io.StringIO()
    with Progress(10, "predict", "block", stream=out) as bar:
        bar.skip(6)
        clock.now += 4
        bar.update(2)
    assert out.getvalue() == "predict: 8/10 blocks, 0.5 block/s, eta 4s\n"
