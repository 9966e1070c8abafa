"""Download progress bars: ``tqdm.auto``, so a bar draws on a terminal and as a widget in Jupyter.

A bar is drawn only where someone watches: when the stream is a terminal or the code runs in a
Jupyter kernel (notebook, JupyterLab, VS Code, Colab). Logs, pipes and CI output stay quiet.
In a kernel without ``ipywidgets``, ``tqdm.auto`` falls back to a text bar in the cell output.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

LABEL_MAX = 40
REFRESH_S = 0.1


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where stderr is no terminal but the cell output shows a bar."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def interactive(stream: TextIO) -> bool:
    """Whether a bar on ``stream`` would be seen: a terminal, or a Jupyter kernel's output."""
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return in_notebook()


class Progress:
    """``Progress(label, total, enabled)``; call :meth:`update` with new bytes, :meth:`close` at the end.

    ``enabled``: True draws, False never does, None draws only when :func:`interactive` says the
    stream is watched. ``stream`` defaults to ``sys.stderr`` (read when the bar is made).
    """

    def __init__(
        self, label: str, total: int | None, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = interactive(self.stream) if enabled is None else enabled
        self.label = label if len(label) <= LABEL_MAX else "…" + label[-(LABEL_MAX - 1) :]
        self.total = total
        self.done = 0
        self._bar: Any = None
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=self.label,
                file=self.stream,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                mininterval=REFRESH_S,
                dynamic_ncols=True,
                leave=True,
            )

    def reset(self, done: int, total: int | None = None) -> None:
        """Restart the count at ``done`` bytes (a resumed download); the rate counts new bytes only."""
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is None:
            return
        self._bar.reset(total=self.total)
        self._bar.n = self._bar.last_print_n = self._bar.initial = done
        self._bar.refresh()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
