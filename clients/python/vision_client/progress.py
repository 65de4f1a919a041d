"""A one-line progress bar for the CLI (done/total, rate, ETA) drawn on stderr only when stderr is
a terminal, so that piped output and `--json` stay clean."""

from __future__ import annotations

import time
from typing import TextIO

WIDTH = 28


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """`advance()` per finished item; `line()` prints a result without tearing the bar."""

    def __init__(self, total: int, stream: TextIO, out: TextIO, unit: str = "img") -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._out = out
        self._unit = unit
        self._started = time.monotonic()
        self.enabled = stream.isatty()

    def render(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else time.monotonic()) - self._started, 1e-9)
        rate = self.done / elapsed
        filled = WIDTH * self.done // self.total if self.total else WIDTH
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                f"{rate:.1f} {self._unit}/s ETA {eta}")

    def _draw(self) -> None:
        if self.enabled:
            self._stream.write(f"\r\x1b[K{self.render()}")
            self._stream.flush()

    def start(self) -> None:
        self._draw()

    def advance(self) -> None:
        self.done += 1
        self._draw()

    def line(self, text: str, to: TextIO | None = None) -> None:
        if self.enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
        target = to or self._out
        print(text, file=target, flush=True)
        self._draw()

    def finish(self) -> None:
        if self.enabled:
            self._stream.write(f"\r\x1b[K{self.render()}\n")
            self._stream.flush()
