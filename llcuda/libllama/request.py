"""One request of the in-process engine: its sampling, stop strings, and UTF-8-safe text.

The worker thread (:mod:`llcuda.libllama.engine`) only appends token ids and, for requests with stop
strings, the bytes of each token to find a stop string as soon as it is complete. Everything else
(text, streaming pieces, results) happens in the caller's thread.
"""

from __future__ import annotations

import codecs
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

from llcuda import options as validation
from llcuda.options import SamplingOptions


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
        return cls(options.temperature, options.top_p, options.top_k, options.min_p, seed, options.ignore_eos,
                   options.grammar)

    @classmethod
    def make(cls, temperature: float, top_p: float, top_k: int, seed: int | None, min_p: float = 0.05) -> Sampling:
        """Validated settings (see :class:`SamplingOptions`)."""
        return cls.of(SamplingOptions.checked(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                              min_p=min_p))


GREEDY = Sampling()


@dataclass(eq=False)
class Request:
    """A prompt being decoded. ``future`` resolves to the request itself when it ends."""

    tokens: list[int]  # the prompt
    max_tokens: int
    sampling: Sampling = GREEDY
    stop: tuple[bytes, ...] = ()
    ignore_eos: bool = False
    stream: Any = None  # anything with put(): generated tokens, then None; only when streaming
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
        """Wake whoever waits: the stream's reader and the future (with ``error`` if it failed)."""
        if self.stream is not None:
            self.stream.put(None)
        try:  # one lock round instead of done() and then set_*()
            if error is None:
                self.future.set_result(self)
            else:
                self.future.set_exception(error)
        except InvalidStateError:  # it had ended (or its future was cancelled) already
            pass


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


def stream_pieces(req: Request, piece: Callable[[int], bytes], final_text: Callable[[], str],
                  deadline: float, on_timeout: Callable[[], BaseException]) -> Iterator[str]:
    """Text pieces of ``req`` as its tokens arrive: whole UTF-8 characters only, never a stop string.

    A character split over two tokens comes out with the second; text that may begin a stop
    string is held until it cannot. The pieces join to ``final_text()``. ``deadline``
    (``time.monotonic()``) bounds the whole request.
    """
    assert req.stream is not None
    stop = [w.decode("utf-8") for w in req.stop]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, emitted = "", 0
    while True:
        try:
            token = req.stream.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise on_timeout() from None
        if token is None:
            break
        text += decoder.decode(piece(token))
        ready = len(text) - held_back(text, stop)
        if ready > emitted:
            yield text[emitted:ready]
            emitted = ready
    rest = final_text()[emitted:]  # raises if the request failed
    if rest:
        yield rest
