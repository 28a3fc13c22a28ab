"""Pacing and retrying a provider's requests: a rate limiter shared by every worker, and the retry
loop that decides which failures may be repeated without risking a second delivery. The same loop
reads the provider's suppression lists (`subscribers sync`): one rule for what is worth asking again."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..providers import Answer, AnswerLost, RequestImpossible, RequestNotSent, Verdict
from .addressing import Reader

# Capped exponential backoff with jitter; a wait the provider asks for is honoured up to a cap.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
MAX_SERVER_WAIT = 300.0


class RateLimiter:
    """At most `rate` request starts (rounded down) in any one second, across every worker; a rate
    below one spaces them 1/rate seconds apart. A 429 holds everyone back. A start that came late
    (the workers were busy, or the machine was) is made up within the second rather than lost for
    good, as a limit per second allows. Every wait of a send goes through it, so that stopping it
    ends them all at once: a send told to stop must not sit out a backoff (or a 429's reset) before
    it can give its batches back."""

    def __init__(self, rate: float) -> None:
        self._size = max(1, math.floor(rate))
        self._window = 1.0 if rate >= 1 else 1.0 / rate
        self._starts: deque[float] = deque()  # the last `size` starts, as reserved (never decreasing)
        self._held_until = 0.0
        self._stopped = asyncio.Event()

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._held_until)
        if len(self._starts) == self._size:
            slot = max(slot, self._starts.popleft() + self._window)
        self._starts.append(slot)
        if slot > now:
            await self.pause(slot - now)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or until stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    def hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, asyncio.get_running_loop().time() + seconds)

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()


@dataclass
class Exchange:
    """One batch's dealings with the provider: who is in it, the prepared request, and whether a
    request of it may have reached the provider without its answer being recorded (then resending
    could deliver twice)."""

    batch_id: int  # 0 outside a campaign
    recipients: list[Reader]
    request: Any  # what the provider prepared
    out: bool = False  # a request is on its way and not answered yet
    lost: bool = False  # a request's answer was lost
    # The last answer, until the database has recorded it: an accepted one still means delivered
    # when recording it fails, so the batch must never go back to pending.
    answer: Answer | None = None

    @property
    def maybe_delivered(self) -> bool:
        return self.out or self.lost or (self.answer is not None and self.answer.delivered_some)


class Emptied(Exception):
    """A refresh before a retry found nobody left to send the batch to."""


class Stopped(Exception):
    """The limiter was stopped while the batch waited for a retry: it is not sent again."""


# Before a retry: rebuild the exchange (dropping who left the list); False when nobody is left.
Refresh = Callable[[Exchange], Awaitable[bool]]

A = TypeVar("A", bound=Answer)
A_co = TypeVar("A_co", bound=Answer, covariant=True)


class Sender(Protocol[A_co]):
    """What the loop asks of a provider (or of its suppression lists): one try at a prepared request."""

    async def send(self, prepared: Any) -> A_co: ...


class Requests(Generic[A]):
    """One exchange's request to the provider, retrying "retry later" answers (rate limits,
    outages) and requests that never left (and lost answers only when `retry_lost`: a read's, whose
    repeating changes nothing), until the limiter is stopped. Returns the last answer; raises
    RequestNotSent, AnswerLost, RequestImpossible, Emptied when a refresh left nobody to send to, or
    Stopped."""

    def __init__(self, provider: Sender[A], limiter: RateLimiter, max_retries: int, retry_lost: bool) -> None:
        self._provider = provider
        self._limiter = limiter
        self._max_retries = max_retries
        self._retry_lost = retry_lost
        self._random = random.Random()
        self.count = 0

    async def post(self, exchange: Exchange, refresh: Refresh | None = None) -> A:
        attempt = 0
        while True:
            if attempt:
                await self._limiter.wait()
                if self._limiter.stopped:
                    raise Stopped
                if refresh is not None and not await refresh(exchange):
                    raise Emptied
            self.count += 1
            asked: float | None = None
            exchange.out = True
            try:
                answer = await self._provider.send(exchange.request)
            except RequestImpossible:
                exchange.out = False
                raise
            except RequestNotSent:
                exchange.out = False
                if attempt >= self._max_retries:
                    raise
            except AnswerLost:
                exchange.out, exchange.lost = False, True
                if not self._retry_lost or attempt >= self._max_retries:
                    raise
            else:
                exchange.out, exchange.answer = False, answer
                if answer.verdict is not Verdict.RETRY_LATER or attempt >= self._max_retries:
                    return answer
                asked = answer.retry_after
            attempt += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            delay = self._random.uniform(delay / 2, delay)
            if asked is not None:
                # Everyone waits for the reset; the jitter keeps the workers from returning at once.
                delay = min(asked, MAX_SERVER_WAIT) + self._random.uniform(0, 0.25)
                self._limiter.hold(delay)
            await self._limiter.pause(delay)
