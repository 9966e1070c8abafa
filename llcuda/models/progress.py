"""A one-line download progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_REDRAW_S = 0.1


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class Progress:
    """``Progress(label, total, enabled)``; call :meth:`update` with new bytes, :meth:`close` at the end.

    ``enabled=None`` draws only if the stream is a terminal (never in logs or CI output).
    """

    def __init__(
        self, label: str, total: int | None, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.label = label if len(label) <= 40 else "…" + label[-39:]
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self._start_done = 0
        self._last = 0.0

    def reset(self, done: int, total: int | None = None) -> None:
        """Restart the count (a resumed download starts at ``done`` bytes)."""
        self.done = self._start_done = done
        if total is not None:
            self.total = total
        self.start = time.monotonic()
        self._draw(force=True)

    def update(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < _REDRAW_S:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        rate = (self.done - self._start_done) / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 20)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            text = (
                f"{self.label} [{bar:<20}] {frac * 100:3.0f}% {_size(self.done)}/{_size(self.total)} "
                f"{_size(rate)}/s ETA {eta:.0f}s"
            )
        else:
            text = f"{self.label} {_size(self.done)} {_size(rate)}/s"
        self.stream.write("\r" + text[:120].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
