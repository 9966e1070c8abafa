"""Threads llcuda starts leave the process's signals to the main thread."""

from __future__ import annotations

import signal

# Linux hands a process-directed signal to any thread that does not block it. Python runs handlers in the
# main thread only, and a main thread blocked in a system call (readline waiting for a key, say) wakes only
# if the signal is delivered to it: Ctrl-C taken by a worker thread would go unnoticed.
MAIN_THREAD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def leave_signals_to_the_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling (non-main) thread, so the main thread receives them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)


def unblock_signals() -> None:
    """Undo :func:`leave_signals_to_the_main_thread` (a child forked from such a thread inherits its mask)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MAIN_THREAD_SIGNALS)
