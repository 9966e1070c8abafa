"""Tokens from the decode thread to the event loop: one wake-up per decode step, not one per token.

The engine's decode thread puts each streamed token into its request's :class:`AsyncSink` (a deque
append) and records the sink in the :class:`StepHub`. After the step, the hub's listener schedules
a single callback on the event loop (``call_soon_threadsafe``) that sets the event of every sink
that got tokens. A woken stream takes all the tokens waiting in its deque at once, so a reader
that falls behind sends several tokens in one chunk instead of queueing chunks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Callable


class StepHub:
    """Collects, during a decode step, the sinks that got tokens, and wakes them after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._touched: list[AsyncSink] = []  # only the decode thread appends and swaps it

    def sink(self) -> AsyncSink:
        return AsyncSink(self)

    def on_step(self) -> None:
        """The engine's step listener (decode thread): one event-loop callback for the whole step."""
        if self._touched:
            touched, self._touched = self._touched, []
            try:
                self._loop.call_soon_threadsafe(_wake, touched)
            except RuntimeError:  # the event loop has closed: nobody is left to wake
                pass


def _wake(sinks: list[AsyncSink]) -> None:
    for sink in sinks:
        sink.event.set()


class AsyncSink:
    """A streaming request's tokens (``Request.stream``), read by a coroutine with :meth:`batches`."""

    __slots__ = ("_tokens", "event", "_hub")

    def __init__(self, hub: StepHub) -> None:
        self._tokens: deque[int | None] = deque()
        self.event = asyncio.Event()
        self._hub = hub

    def put(self, token: int | None) -> None:
        """Called by the decode thread only (never blocks)."""
        self._tokens.append(token)
        self._hub._touched.append(self)

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
