"""One request of the in-process engine: its sampling, stop strings, and UTF-8-safe text.

The worker thread (:mod:`llcuda.libllama.engine`) only appends token ids and, for requests with stop
strings, the bytes of each token to find a stop string as soon as it is complete. Everything else
(text, streaming pieces, results) happens in the caller's thread: :class:`PieceDecoder` turns the
streamed tokens into text pieces, for the blocking iterator :func:`stream_pieces` and for
``llcuda.serve``'s event loop alike.
"""

from __future__ import annotations

import codecs
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable, Protocol, cast

from llcuda import options as validation
from llcuda.options import SamplingOptions


class TokenSink(Protocol):
    """Where a streaming request's tokens go: each generated token, then None once it ended.

    ``put`` is called from the decode thread and must not block (a ``queue.SimpleQueue`` qualifies).
    """

    def put(self, token: int | None) -> None: ...


@dataclass(frozen=True)
class Sampling:
    """A sampler chain's settings; equal settings share a chain (changing it costs a graph re-reserve).

    ``ban_eog``: end-of-generation tokens get a -inf bias (``ignore_eos``, as llama-server does), so
    the model cannot write them. ``grammar``: GBNF the output must follow (sampled on the CPU).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    ban_eog: bool = False
    grammar: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @classmethod
    def of(cls, options: SamplingOptions) -> Sampling:
        """The chain settings of checked options; every greedy request shares one value, whatever its
        top_p/top_k/min_p/seed."""
        if options.temperature <= 0.0:
            return cls(ban_eog=options.ignore_eos, grammar=options.grammar)
        seed = None if options.seed in (None, -1, 2**32 - 1) else options.seed
        return cls(
            options.temperature, options.top_p, options.top_k, options.min_p, seed, options.ignore_eos, options.grammar
        )

    @classmethod
    def make(
        cls,
        temperature: float,
        top_p: float,
        top_k: int,
        seed: int | None,
        *,
        min_p: float = 0.05,
        grammar: str | None = None,
    ) -> Sampling:
        """Validated settings (see :class:`SamplingOptions`)."""
        return cls.of(
            SamplingOptions.checked(
                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, min_p=min_p, grammar=grammar
            )
        )


GREEDY = Sampling()


@dataclass(eq=False)
class Request:
    """A prompt being decoded. ``future`` resolves to the request itself when it ends."""

    tokens: list[int]  # the prompt
    max_tokens: int
    sampling: Sampling = GREEDY
    stop: tuple[bytes, ...] = ()
    ignore_eos: bool = False
    stream: TokenSink | None = None  # generated tokens, then None; only when streaming
    future: Future[Request] = field(default_factory=Future)
    seq: int = -1
    prefilled: int = 0  # prompt tokens already in the KV cache
    reused: int = 0  # of those, tokens a finished request had left in the cache (prefix reuse)
    out: list[int] = field(default_factory=list)  # generated tokens (an end-of-generation token included)
    text: bytearray = field(default_factory=bytearray)  # bytes of ``out``, kept only when there are stop strings
    stop_at: int | None = None  # byte offset in ``text`` where the stop string begins
    stop_word: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    done: float = 0.0
    finish: str = "length"
    cancelled: bool = False

    def find_stop(self, piece: bytes) -> bool:
        """Append ``piece`` (bytes of the latest token) and say whether a stop string is now complete."""
        self.text += piece
        best: tuple[int, bytes] | None = None
        for word in self.stop:
            start = max(0, len(self.text) - len(piece) - len(word) + 1)
            at = self.text.find(word, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, word)
        if best is None:
            return False
        self.stop_at, self.stop_word = best[0], best[1].decode("utf-8")
        self.finish = "stop"
        return True

    def end(self, error: BaseException | None = None) -> None:
        """Wake whoever waits: the future (with ``error`` if it failed), then the stream's reader, which
        finds the future done once it reads the final None."""
        try:  # one lock round instead of done() and then set_*()
            if error is None:
                self.future.set_result(self)
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # it had ended (or its future was cancelled) already
            pass
        if self.stream is not None:
            self.stream.put(None)


def stop_words(stop: str | Sequence[str] | None) -> tuple[bytes, ...]:
    return tuple(s.encode("utf-8") for s in validation.check_stop(stop))


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the beginning of a stop string."""
    longest = 0
    for word in stop:
        for k in range(min(len(word) - 1, len(text)), longest, -1):
            if text.endswith(word[:k]):
                longest = k
                break
    return longest


class PieceDecoder:
    """The text of a request's streamed tokens, piece by piece: whole UTF-8 characters only, never a
    stop string.

    :meth:`feed` takes each streamed token and returns the text that is ready (often ""): a character
    split over two tokens comes out with the second; text that may begin a stop string is held until
    it cannot. Once the request ended, :meth:`finish` returns the rest; all pieces join to the
    request's text (cut before its stop string, if one ended it).
    """

    __slots__ = ("_req", "_piece", "_stop", "_decode", "_pending", "_emitted")

    def __init__(self, req: Request, piece: Callable[[int], bytes]) -> None:
        self._req, self._piece = req, piece
        self._stop = [w.decode("utf-8") for w in req.stop]
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._pending = ""  # decoded text not returned yet (it may begin a stop string)
        self._emitted = 0  # characters returned so far

    def feed(self, token: int) -> str:
        text = self._decode(self._piece(token))
        if not self._stop:
            self._emitted += len(text)
            return text
        # Only the pending tail can begin a stop string: the text returned before could not.
        pending = self._pending + text
        ready = len(pending) - held_back(pending, self._stop)
        self._pending = pending[ready:]
        self._emitted += ready
        return pending[:ready]

    def finish(self) -> str:
        """The text not returned yet, once the request has ended (``req.future`` is done)."""
        req = self._req
        if req.stop_at is not None:  # the stop string's tokens were never streamed: cut the whole text
            return bytes(req.text[: req.stop_at]).decode("utf-8", errors="replace")[self._emitted :]
        rest = self._pending + self._decode(b"", True)
        self._pending = ""
        self._emitted += len(rest)
        return rest


def stream_pieces(
    req: Request,
    piece: Callable[[int], bytes],
    final_text: Callable[[], str],
    deadline: float,
    on_timeout: Callable[[], BaseException],
) -> Iterator[str]:
    """Text pieces of ``req`` as its tokens arrive: whole UTF-8 characters only, never a stop string.

    A character split over two tokens comes out with the second; text that may begin a stop
    string is held until it cannot. The pieces join to ``final_text()``. ``deadline``
    (``time.monotonic()``) bounds the whole request.
    """
    stream = req.stream
    if not isinstance(stream, queue.SimpleQueue):
        raise TypeError("stream_pieces reads a request that streams into a queue.SimpleQueue")
    decoder = PieceDecoder(req, piece)
    while True:
        try:
            token = cast("queue.SimpleQueue[int | None]", req.stream).get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise on_timeout() from None
        if token is None:
            break
        text = decoder.feed(token)
        if text:
            yield text
    final_text()  # raises if the request failed
    rest = decoder.finish()
    if rest:
        yield rest
