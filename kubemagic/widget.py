"""The live widget: engines and pods, scale, stop, progress, logs.

A view only: it reads the session's state when the session says something changed and
turns clicks into session calls that do not block (so a click is handled at once even while
a ``%%kubemap`` cell is busy — the cell's wait loop pumps widget messages).
"""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from .progress import format_progress

if TYPE_CHECKING:
    from .session import KubeCluster

#: engine-table refreshes are throttled: a start-up poll fires every few milliseconds
ENGINES_REFRESH_S = 0.25

_STATE_COLORS = {"ready": "#2e7d32", "joining": "#f9a825", "draining": "#ef6c00",
                 "leaving": "#ef6c00", "gone": "#9e9e9e"}


class SessionWidget(w.VBox):
    """ipywidgets view of one :class:`~kubemagic.session.KubeCluster`."""

    def __init__(self, session: "KubeCluster") -> None:
        self.session = session
        self.title = w.HTML()
        self.count = w.BoundedIntText(value=session.n, min=0, max=10_000,
                                      description="engines", layout=w.Layout(width="160px"))
        self.scale_button = w.Button(description="Scale", icon="arrows-v",
                                     tooltip="resize the fleet to the number on the left")
        self.stop_button = w.Button(description="Stop map", icon="stop",
                                    button_style="warning",
                                    tooltip="cancel the running map's pending work")
        self.shutdown_button = w.Button(description="Shut down", icon="power-off",
                                        button_style="danger",
                                        tooltip="stop all engines and the controller")
        self.bar = w.IntProgress(value=0, min=0, max=1, description="progress")
        self.bar_label = w.HTML()
        self.engines_table = w.HTML()
        self.message = w.HTML()
        self.logs = w.Textarea(layout=w.Layout(width="100%", height="200px"))
        self.logs_button = w.Button(description="Refresh logs", icon="refresh")
        logs_box = w.Accordion(children=[w.VBox([self.logs_button, self.logs])])
        logs_box.set_title(0, "Engine logs")
        logs_box.selected_index = None
        super().__init__([
            self.title,
            w.HBox([self.count, self.scale_button, self.stop_button, self.shutdown_button]),
            w.HBox([self.bar, self.bar_label]),
            self.engines_table,
            self.message,
            logs_box,
        ])
        self.add_class("kubemagic-widget")
        self.scale_button.on_click(self._scale_clicked)
        self.stop_button.on_click(lambda _: self._cancel_map())
        self.shutdown_button.on_click(lambda _: self._shutdown())
        self.logs_button.on_click(lambda _: self.refresh_logs())
        self._lock = threading.Lock()
        self._last_engines = 0.0
        self._scaling_to: int | None = None
        self._trailing: threading.Timer | None = None
        session.add_listener(self._on_change)
        self.refresh()

    # -- actions ---------------------------------------------------------------------------
    def _scale_clicked(self, _: Any) -> None:
        n = int(self.count.value)
        try:
            self.session.scale(n, wait=False)
        except Exception as e:  # shown in the widget; a click must never raise
            self._say(str(e), error=True)
        else:
            self._scaling_to = n
            self._say(f"scaling to {n} engine(s)…")

    def _cancel_map(self) -> None:
        handle = self.session.current_map
        if handle is None or handle.done():
            self._say("no map is running")
            return
        handle.cancel()
        self._say("cancelling the map: pending work dropped, engines kept")

    def _shutdown(self) -> None:
        self._say("shutting down…")
        self.session.stop()

    def _say(self, text: str, error: bool = False) -> None:
        color = "#c62828" if error else "#37474f"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    # -- refresh ---------------------------------------------------------------------------
    def _on_change(self, topic: str) -> None:
        if topic == "engines" and time.monotonic() - self._last_engines < ENGINES_REFRESH_S:
            # throttled, but the last change must still be drawn: redraw once, shortly
            if self._trailing is None:
                self._trailing = threading.Timer(ENGINES_REFRESH_S, self._trailing_refresh)
                self._trailing.daemon = True
                self._trailing.start()
            return
        self.refresh(topic)

    def _trailing_refresh(self) -> None:
        self._trailing = None
        self.refresh("engines")

    def refresh(self, topic: str = "all") -> None:
        """Redraw from the session's state (any thread)."""
        with self._lock:
            s = self.session
            if topic in ("all", "state", "engines", "map"):
                self._last_engines = time.monotonic()
                ready = len(s.ready_ids())
                self.title.value = (
                    f"<b>kubemagic</b> · {html.escape(s.backend)} · {html.escape(s.state)} · "
                    f"<span class='kubemagic-ready'>{ready}</span>/"
                    f"<span class='kubemagic-requested'>{s.n}</span> engines ready"
                )
                self.engines_table.value = _engines_html(s)
                if s.last_error:
                    self._say(s.last_error, error=True)
                elif s.scaler.notice:
                    self._say(s.scaler.notice)
                elif self._scaling_to is not None and ready == self._scaling_to == s.n:
                    self._say(f"scaled to {ready} engine(s)")
                    self._scaling_to = None
            handle = s.current_map
            if handle is not None and topic in ("all", "progress", "map"):
                p = handle.progress()
                self.bar.max = max(p.total, 1)
                self.bar.value = p.done if p.total else 1
                self.bar.bar_style = {"done": "success", "failed": "danger",
                                      "cancelled": "warning"}.get(p.state, "info")
                self.bar_label.value = html.escape(format_progress(p))
            off = s.state != "running"
            self.scale_button.disabled = self.shutdown_button.disabled = off

    def refresh_logs(self) -> None:
        self.logs.value = self.session.logs()


def _engines_html(session: "KubeCluster") -> str:
    try:
        rows = session.engine_states() if session.state == "running" else []
    except Exception as e:  # a platform hiccup must not kill the view
        return f"<i>engine state unavailable: {html.escape(str(e))}</i>"
    if not rows:
        return "<i>no engines</i>"
    cells = []
    for r in rows:
        state = r.get("state", "starting")
        color = _STATE_COLORS.get(state, "#1565c0")
        reason = " ".join(x for x in (r.get("phase", ""), r.get("reason", "")) if x)
        cells.append(
            "<tr>"
            f"<td>{r.get('index', '')}</td><td>{r.get('engine', '')}</td>"
            f"<td>{html.escape(str(r.get('name', '')))}</td>"
            f"<td style='color:{color}'>{html.escape(state)}</td>"
            f"<td>{html.escape(reason)}</td><td>{r.get('inflight', '')}</td>"
            "</tr>"
        )
    return (
        "<table class='kubemagic-engines'><tr><th>slot</th><th>engine</th><th>pod / process"
        "</th><th>state</th><th>phase</th><th>chunks</th></tr>" + "".join(cells) + "</table>"
    )
