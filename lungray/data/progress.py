"""Progress of the long data steps (decoding, duplicate search): a tqdm bar on a terminal, one
plain line per step otherwise.

A tqdm bar redraws itself with carriage returns; written to a log file or a CI console (not a
TTY) it becomes one long line of bars joined by ``\\r`` (issue 20.6). Off a terminal each step
therefore prints one line when it ends (what it did, how many, how long), on stderr like the bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Optional, TextIO

__all__ = ["progress_bar", "is_tty"]


def is_tty(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default stderr, where the bars go) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class _StepLine:
    """tqdm's ``update``/``close``/iteration, printing one line at the end instead of a bar."""

    def __init__(self, iterable: Optional[Iterable[Any]], total: Optional[int], desc: str, unit: str, stream: TextIO):
        self.iterable, self.total, self.desc, self.unit, self.stream = iterable, total, desc, unit, stream
        self.n = 0
        self.t0 = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += int(n)

    def __iter__(self):
        try:
            for item in self.iterable or ():
                self.n += 1
                yield item
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        of = f"/{self.total}" if self.total is not None and self.total != self.n else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{'' if self.n == 1 else 's'} in {time.perf_counter() - self.t0:.1f} s",
              file=self.stream, flush=True)

    def __enter__(self) -> "_StepLine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Optional[Iterable[Any]] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, stream: Optional[TextIO] = None):
    """A tqdm bar when ``enabled`` and ``stream`` (stderr) is a terminal; one line at the end of
    the step when enabled off a terminal; nothing when not enabled. Used like tqdm: iterate
    over it, or ``update(n)`` and ``close()``."""
    stream = stream if stream is not None else sys.stderr
    if enabled and is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    if enabled:
        return _StepLine(iterable, total, desc, unit, stream)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
