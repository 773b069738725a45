"""CLI progress without a terminal: a plain line every N seconds with rate, ETA and the run's failures."""

import io

from pipeline.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_n_seconds_with_rate_eta_and_total_failures():
    clock, out = Clock(), io.StringIO()
    bar = Progress("extract", "clip", stream=out, every_s=10, clock=clock)
    bar.set_total(40)
    clock.now = 5
    bar.update(10, failed=1)  # before 10 s: no line yet
    assert out.getvalue() == ""
    clock.now = 10
    bar.update(10, failed=2, shard=3)
    assert out.getvalue().splitlines() == ["extract: 20/40 clips (50%), ETA 10s, 2.00 clips/s, 3 failed, 10s elapsed, shard 3"]
    clock.now = 20
    bar.update(20)  # the last one always prints
    bar.close()  # and close does not repeat it
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("extract: 40/40 clips (100%), ETA 0s") and "3 failed" in lines[1]
    assert len(lines) == 2


def test_resumed_run_counts_its_rate_from_where_it_started():
    clock, out = Clock(), io.StringIO()
    bar = Progress("run", "step", total=10, initial=6, stream=out, every_s=0, clock=clock, failures=False)
    clock.now = 4
    bar.update(2)
    assert out.getvalue().startswith("run: 8/10 steps (80%), ETA 4s, 0.50 steps/s, 4s elapsed")  # steps cannot fail
