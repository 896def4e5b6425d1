"""The training progress bar: over minutes for a time-bounded run, over steps
otherwise. The bar is driven by a fake clock and rendered into a string."""
import io

from model import train


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def render(progress):
    return str(progress.bar)  # the line the bar shows now


def test_time_bounded_run_shows_minutes_moved_by_the_clock():
    clock, out = Clock(), io.StringIO()
    bar = train.Progress(0, 100000, max_seconds=6 * 60, file=out, clock=clock)
    for step in (1, 2, 3):
        clock.now += 30.0  # a slow step: half a minute each
        bar.update(step, loss="7.000")
    text = render(bar)
    assert "1.5/6.0 min" in text and "step=3" in text and "loss=7.000" in text
    assert "100000" not in text and "25%" in text
    # The bar stops at the time bound even if the last step overruns it.
    clock.now += 10 * 60.0
    bar.update(4)
    assert bar.bar.n == 6.0 and "6.0/6.0 min" in render(bar)
    bar.close()


def test_step_bounded_run_counts_steps():
    out = io.StringIO()
    bar = train.Progress(10, 40, file=out, clock=Clock())
    bar.update(11, loss="1.000")
    text = render(bar)
    assert "11/40" in text and "min" not in text.split("[")[0]
    bar.close()
