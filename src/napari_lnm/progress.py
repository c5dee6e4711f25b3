"""Progress reporting and cancellation shared by every long-running core function.

Core functions take two optional keyword arguments:

``progress(done: int, total: int, message: str) -> None``
    called as work advances (``total`` may be 0 when unknown);
``should_stop() -> bool``
    polled between units of work; when it returns True the function raises
    :class:`Cancelled` after leaving every file it wrote complete (atomic writes).

The napari widgets pass callbacks that emit Qt signals and read a
``threading.Event``; the command line passes a :class:`ProgressReporter` and Ctrl-C.
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


def _clock(seconds: float) -> str:
    """``H:MM:SS`` of a number of seconds."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressReporter:
    """The command line's ``progress(done, total, message)`` callback.

    On a terminal it draws a tqdm bar.  When the stream is not a terminal (a log file,
    CI, nohup, a cluster job) it writes one line per finished unit instead of
    carriage-return updates: ``[3/8] S03 done, 120 tiles, 0:00:41 elapsed, ETA 0:01:30``.
    ``log_units=False`` (fine units such as tiles) writes no lines at all in a log; the
    caller reports the finished slide.  ``bar=False`` draws no bar on a terminal (an
    outer count whose inner stage has its own bar).
    """

    def __init__(self, desc: str = "", unit: str = "item", disable: bool = False, log_units: bool = True,
                 bar: bool = True, stream=None):
        import sys
        import time

        self.desc = desc
        self.unit = unit
        self.disable = disable
        self.log_units = log_units
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.draw_bar = bar
        self._bar = None
        self._total: Optional[int] = None
        self._t0 = time.monotonic()
        self._rate_t0 = self._t0
        self._rate_done0: Optional[int] = None
        self._logged = 0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.disable:
            return
        if self.tty:
            self._draw(done, total, message)
        elif self.log_units:
            self._log(done, total, message)

    def skip(self, done: int, total: int, message: str = "") -> None:
        """Report a unit finished without work (resumed): logged, but left out of the ETA's rate."""
        import time

        self(done, total, message)
        self._rate_t0, self._rate_done0 = time.monotonic(), done

    def _draw(self, done: int, total: int, message: str) -> None:
        from tqdm import tqdm

        if not self.draw_bar or total <= 0:
            return
        if self._bar is None or total != self._total:
            self.close()
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.stream, dynamic_ncols=True,
                             leave=False)
            self._total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message[-40:], refresh=False)
        self._bar.refresh()

    def _log(self, done: int, total: int, message: str) -> None:
        import time

        if total != self._total:  # a new stage (another total): its own count, clock and rate
            self._total, self._rate_done0 = total, None
            self._t0 = self._rate_t0 = time.monotonic()
        if self._rate_done0 is None:
            self._rate_done0 = done  # units already finished before this run (resume) do not count in the rate
            self._logged = done if done == 0 else done - 1  # a resumed count is still worth one line
        if done <= self._logged:
            return  # the same unit again (e.g. a tile count inside a slide): no new line
        self._logged = done
        now = time.monotonic()
        parts = [f"[{done}/{total}]" if total > 0 else f"[{done}]"]
        if self.desc:
            parts.append(self.desc)
        if message:
            parts.append(message)
        line = " ".join(parts) + f", {_clock(now - self._t0)} elapsed"
        worked = done - self._rate_done0
        if 0 < total and done < total and worked > 0:
            line += f", ETA {_clock((now - self._rate_t0) / worked * (total - done))}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar (if one is drawn)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
