"""kubemagic.progress: the one-line progress text shared by the bar and the widget."""

from __future__ import annotations

from kubemagic.mapping import Progress
from kubemagic.progress import TextProgress, format_duration, format_progress, text_bar


def test_progress_text():
    p = Progress(done=50, total=100, failures=1, elapsed=10.0, retried_chunks=2, state="running")
    assert format_progress(p) == "50/100 items · 5.0 items/s · ETA 10 s · 1 failed · 2 chunk(s) retried"
    assert text_bar(p, width=10).startswith("[#####.....]")
    assert format_duration(3725) == "1 h 02 min" and format_duration(None) == "?"


def test_speculated_chunks_are_counted():
    p = Progress(done=9, total=9, failures=0, elapsed=1.0, retried_chunks=0, state="done",
                 speculated=2)
    assert format_progress(p).endswith("0 failed · 2 chunk(s) speculated")


def test_text_progress_reads_a_progress_callable(capsys):
    import sys

    p = Progress(done=1, total=2, failures=0, elapsed=1.0, retried_chunks=0, state="running")
    bar = TextProgress(lambda: p, stream=sys.stdout, interval=0)
    bar.update()
    bar.close()
    out = capsys.readouterr().out
    assert out.count("1/2 items") == 2 and out.endswith("\n")
