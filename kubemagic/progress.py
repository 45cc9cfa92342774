"""Progress displays for a running map: a widget in a notebook, a text bar elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from ._kernel import in_kernel
from .mapping import Progress

#: what a display reads: a snapshot of the map, taken whenever it redraws
ProgressSource = Callable[[], Progress]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_progress(p: Progress) -> str:
    """One line: ``45/100 items · 12.3 items/s · ETA 4.1 s · 0 failed``."""
    parts = [f"{p.done}/{p.total} items", f"{p.rate:,.1f} items/s"]
    if p.state == "running":
        parts.append(f"ETA {format_duration(p.eta)}")
    else:
        parts.append(f"{p.state} in {format_duration(p.elapsed)}")
    parts.append(f"{p.failures} failed")
    if p.retried_chunks:
        parts.append(f"{p.retried_chunks} chunk(s) retried")
    if p.speculated:
        parts.append(f"{p.speculated} chunk(s) speculated")
    return " · ".join(parts)


def text_bar(p: Progress, width: int = 30) -> str:
    filled = int(width * p.done / p.total) if p.total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {format_progress(p)}"


class TextProgress:
    """A carriage-return text bar for terminals and plain IPython."""

    def __init__(self, progress: ProgressSource, stream: TextIO | None = None,
                 interval: float = 0.2) -> None:
        self.progress = progress
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def update(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.stream.write("\r" + text_bar(self.progress()))
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r" + text_bar(self.progress()) + "\n")
        self.stream.flush()


class WidgetProgress:
    """A compact progress bar widget, for ``KubeCluster.map`` called from code."""

    def __init__(self, progress: ProgressSource, total: int) -> None:
        import ipywidgets as w
        from IPython.display import display

        self.progress = progress
        total = max(total, 1)
        self.bar = w.IntProgress(value=0, min=0, max=total, description="kubemap")
        self.label = w.HTML()
        self.box = w.HBox([self.bar, self.label])
        display(self.box)

    def update(self) -> None:
        p = self.progress()
        self.bar.value = p.done
        self.label.value = format_progress(p)
        self.bar.bar_style = {"done": "success", "failed": "danger",
                              "cancelled": "warning"}.get(p.state, "")

    def close(self) -> None:
        self.update()


def progress_display(progress: ProgressSource, total: int) -> Any:
    """A widget bar in a notebook kernel, a text bar anywhere else."""
    return WidgetProgress(progress, total) if in_kernel() else TextProgress(progress)
