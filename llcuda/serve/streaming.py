"""Tokens from the decode thread to the event loop: one wake-up per decode step at most, not one per
token.

The engine's decode thread puts each streamed token into its request's :class:`AsyncSink` (a deque
append) and records the sink in the :class:`StepHub`. After a step, the hub's listener schedules
a single callback on the event loop (``call_soon_threadsafe``) that sets the event of every sink
that got tokens. A woken stream takes all the tokens waiting in its deque at once and sends them as
one chunk, so a reader that falls behind catches up instead of queueing chunks.

With an ``interval``, the hub wakes the streams at most that often: when decode steps are faster,
each chunk carries the tokens of several steps, which divides the event loop's work (a JSON chunk, a
socket write and a wake-up per stream) and its contention for the GIL with the decode thread. A
stream's first token and its end are passed on at once, whatever the interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Callable

# llcuda serve's default interval: streams get at most 50 chunks a second; a GPU's decode steps of a
# few milliseconds then share a chunk, a CPU's slower ones do not.
STREAM_INTERVAL_S = 0.02


class StepHub:
    """Collects the sinks that got tokens during decode steps, and wakes them after a step: after
    every step, or once ``interval`` seconds passed since the last wake-up (sooner for a stream's
    first token or its end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.0) -> None:
        self._loop = loop
        self._interval = interval
        # Only the decode thread touches these: sinks with tokens not yet announced, whether one of
        # them needs waking now, when the last wake-up was sent.
        self._touched: list[AsyncSink] = []
        self._urgent = False
        self._last = 0.0

    def sink(self) -> AsyncSink:
        return AsyncSink(self)

    def on_step(self) -> None:
        """The engine's step listener (decode thread): one event-loop callback for all the streams."""
        if not self._touched:
            return
        if self._interval > 0.0 and not self._urgent:
            now = time.perf_counter()
            if now - self._last < self._interval:
                return
            self._last = now
        elif self._interval > 0.0:
            self._last = time.perf_counter()
        touched, self._touched, self._urgent = self._touched, [], False
        for sink in touched:
            sink.announced = False
        try:
            self._loop.call_soon_threadsafe(_wake, touched)
        except RuntimeError:  # the event loop has closed: nobody is left to wake
            pass


def _wake(sinks: list[AsyncSink]) -> None:
    for sink in sinks:
        sink.event.set()


class AsyncSink:
    """A streaming request's tokens (``Request.stream``), read by a coroutine with :meth:`batches`."""

    __slots__ = ("_tokens", "event", "_hub", "announced", "_started")

    def __init__(self, hub: StepHub) -> None:
        self._tokens: deque[int | None] = deque()
        self.event = asyncio.Event()
        self._hub = hub
        self.announced = False  # in the hub's list of sinks to wake (decode thread only)
        self._started = False

    def put(self, token: int | None) -> None:
        """Called by the decode thread only (never blocks)."""
        self._tokens.append(token)
        hub = self._hub
        if token is None or not self._started:
            self._started = True
            hub._urgent = True
        if not self.announced:
            self.announced = True
            hub._touched.append(self)

    async def batches(self) -> AsyncIterator[list[int | None]]:
        """Lists of the tokens that arrived since the last one, the last list ending with None."""
        tokens = self._tokens
        while True:
            n = len(tokens)
            if n == 0:
                await self.event.wait()
                self.event.clear()  # before reading: tokens put after this wake the next wait
                continue
            batch = [tokens.popleft() for _ in range(n)]
            yield batch
            if batch[-1] is None:
                return


class PieceCache(dict[int, bytes]):
    """``piece(token)`` of each token seen so far (a token's bytes never change)."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        super().__init__()
        self._piece = piece

    def __missing__(self, token: int) -> bytes:
        value = self[token] = self._piece(token)
        return value
