"""TokenStream: the text pieces of one generation as they are decoded, then its result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

from .types import InferResult


class TokenStream(Iterator[str]):
    """Yields text pieces as the model generates them; ``.result`` holds the InferResult at the end."""

    def __init__(self, pieces: Iterator[str], finish: Callable[[], InferResult]) -> None:
        self._pieces = pieces
        self._finish = finish
        self.result: InferResult | None = None

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.result is None:
                self.result = self._finish()
            raise

    def text(self) -> str:
        """Consume the rest of the stream and return the whole generated text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text

    def close(self) -> None:
        """Stop reading early; the engine stops generating for this stream."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
