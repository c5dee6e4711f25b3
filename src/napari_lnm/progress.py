"""Progress reporting and cancellation shared by every long-running core function.

Core functions take two optional keyword arguments:

``progress(done: int, total: int, message: str) -> None``
    called as work advances (``total`` may be 0 when unknown);
``should_stop() -> bool``
    polled between units of work; when it returns True the function raises
    :class:`Cancelled` after leaving every file it wrote complete (atomic writes).

The napari widgets pass callbacks that emit Qt signals and read a
``threading.Event``; the command line passes a tqdm bar and Ctrl-C.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised by a core function when ``should_stop()`` returned True."""


def check_stop(should_stop: Optional[StopFn]) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled by the user")


def report(progress: Optional[ProgressFn], done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)
