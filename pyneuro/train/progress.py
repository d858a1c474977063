"""A dependency-free progress bar: redraws in place on a terminal, prints periodic lines elsewhere.

The shown values are computed only when the bar is drawn (``fields`` may be a callable): on a GPU,
reading a running loss waits for the device, which must not happen at every step."""
from __future__ import annotations

import sys
import time


class Progress:
    TTY_INTERVAL_S = 0.25  # redraws per second on a terminal, at most 4

    def __init__(self, total: int, desc: str = "", every: int = 50, stream=None, width: int = 24, start: int = 0):
        self.total, self.desc, self.every, self.width = total, desc, max(1, every), width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.n = self.first = start  # a resumed epoch starts part-way
        self.samples = 0
        self._drawn = 0.0

    def update(self, n_samples: int, fields=None, **kwargs) -> None:
        self.n += 1
        self.samples += n_samples
        now = time.perf_counter()
        due = (now - self._drawn >= self.TTY_INTERVAL_S) if self.tty else self.n % self.every == 0
        if due or self.n == self.total:
            self._drawn = now
            self._draw({**(fields() if callable(fields) else fields or {}), **kwargs})

    def _draw(self, fields) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.samples / elapsed
        eta = (self.total - self.n) * elapsed / max(self.n - self.first, 1)
        done = int(self.width * self.n / max(self.total, 1))
        bar = "#" * done + "." * (self.width - done)
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        line = f"{self.desc} [{bar}] {self.n}/{self.total}  {shown}  {rate:,.0f} samples/s  eta {eta:4.0f}s"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
