"""The rate limiter's schedule, on a clock of its own: at most `rate` starts in any one second, a
start that came late made up within the second, a 429's hold, and rates below one a second."""

from __future__ import annotations

import asyncio

from newsletter.send.pacing import RateLimiter


class _Clock(asyncio.SelectorEventLoop):
    """An event loop whose time passes only when told to."""

    now = 0.0

    def time(self) -> float:
        return self.now


def _starts(rate: float, plan: list[float | str]) -> list[float]:
    """The time of each start: `plan` is, in order, a start ("start"), a stall of that many
    seconds (a float), or a 429's hold ("hold 3")."""
    loop = _Clock()
    limiter = RateLimiter(rate)

    async def pause(seconds: float) -> None:
        loop.now += seconds

    limiter.pause = pause  # type: ignore[method-assign]
    starts: list[float] = []

    async def run() -> None:
        for step in plan:
            if isinstance(step, float):
                loop.now += step
            elif step.startswith("hold"):
                limiter.hold(float(step.split()[1]))
            else:
                await limiter.wait()
                starts.append(round(loop.now, 6))

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return starts


def test_no_second_holds_more_starts_than_the_rate() -> None:
    starts = _starts(10, ["start"] * 25)
    assert starts == [0.0] * 10 + [1.0] * 10 + [2.0] * 5
    assert all(sum(1 for t in starts if s <= t < s + 1) <= 10 for s in starts)


def test_a_start_that_came_late_is_made_up_within_the_second() -> None:
    # Five starts, then the workers stall for 0.5 s: the other five of that second are still
    # there to take, and the second after it is the limit again.
    starts = _starts(10, ["start"] * 5 + [0.5] + ["start"] * 10)
    assert starts == [0.0] * 5 + [0.5] * 5 + [1.0] * 5


def test_a_hold_makes_everyone_wait_and_a_slow_rate_spaces_starts() -> None:
    assert _starts(10, ["start", "hold 3", "start", "start"]) == [0.0, 3.0, 3.0]
    assert _starts(0.5, ["start"] * 3) == [0.0, 2.0, 4.0]
    assert _starts(2.5, ["start"] * 5) == [0.0, 0.0, 1.0, 1.0, 2.0]  # whole starts in a second
