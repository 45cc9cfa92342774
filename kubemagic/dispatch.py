"""The dispatcher: feeds chunks of one map to ready engines, one thread per map.

Dynamic assignment (not a static split): each ready engine holds at most ``PIPELINE``
chunks; when one returns, the engine gets the next. Engines that join mid-map (after their
replay) get work at once; engines being drained get none; chunks on an engine that died
are requeued by :class:`~kubemagic.mapping.MapRun` (at-least-once delivery, duplicates
dropped by item index). The caller's thread only waits (``MapHandle.result``), keeping
widgets live and turning Ctrl-C into a clean cancel.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import ipyparallel as ipp

from . import remote
from ._loop import wait_until
from .errors import KubemagicError, SessionError, StartupError, UsageError
from .mapping import ChunkPlanner, MapRun, Progress

if TYPE_CHECKING:
    from .session import KubeCluster

#: chunks in flight per engine: two keep an engine busy while the next result travels
PIPELINE = 2
#: how often progress listeners are told (seconds)
PROGRESS_INTERVAL = 0.1


class MapHandle:
    """A running map: ``result()``, ``cancel()``, ``progress()``, ``done()``."""

    def __init__(self, session: "KubeCluster", func: Callable[..., Any],
                 args: list[tuple[Any, ...]], *, chunksize: int | str, ordered: bool,
                 retries: int, timeout: float | None, return_exceptions: bool) -> None:
        self.session = session
        self.func = func
        self.args = args
        self.timeout = timeout
        self.return_exceptions = return_exceptions
        self.run = MapRun(
            total=len(args), planner=ChunkPlanner(len(args), chunksize), retries=retries,
            return_exceptions=return_exceptions, ordered=ordered,
            item_reprs=lambda i: _short_repr(args[i]),
        )
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="kubemagic-map",
                                        daemon=True)
        self._inflight: dict[Any, tuple[Any, int]] = {}

    # -- public --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return self._finished.is_set()

    def progress(self) -> Progress:
        return self.run.progress()

    def cancel(self) -> None:
        """Stop handing out work and abort queued chunks; running items finish."""
        self._cancel.set()

    def result(self, timeout: float | None = None, progress: bool = False) -> list[Any]:
        """Wait for the map (widgets stay live), then return results or raise its error.

        A KeyboardInterrupt while waiting cancels the map and is re-raised; the engines
        and everything pushed to them stay.
        """
        from .progress import progress_display

        display = progress_display(self) if progress else None
        try:
            finished = wait_until(self._finished.is_set, timeout if timeout else 1e9,
                                  tick=display.update if display else None,
                                  interval=0.02, event=self._finished)
        except KeyboardInterrupt:
            self.cancel()
            self._finished.wait(30)
            raise
        finally:
            if display:
                display.close()
        if not finished:
            raise TimeoutError(f"map not finished after {timeout} s")
        return self.run.results()

    # -- the loop (its own thread) ---------------------------------------------------------
    def _dispatch(self) -> None:
        run, session = self.run, self.session
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        last_progress = 0.0
        starved_since: float | None = None  # when the last ready engine went away
        try:
            while run.active:
                if self._cancel.is_set():
                    run.cancel()
                    break
                if deadline is not None and time.monotonic() > deadline:
                    run.fail(KubemagicError(
                        f"the map did not finish within {self.timeout} s "
                        f"({run.done} of {run.total} items done)",
                        fix="raise --timeout, add engines (%kubemap scale N), or "
                        "check the engines' logs for a hang"))
                    break
                session.process_events()
                self._fill(session.ready_ids())
                if self._inflight or session.ready_ids():
                    starved_since = None
                elif starved_since is None:
                    starved_since = time.monotonic()
                elif time.monotonic() - starved_since > session.start_timeout:
                    run.fail(StartupError(
                        f"no engine has been available for {session.start_timeout:.0f} s "
                        f"({run.done} of {run.total} items done)",
                        fix="look at %kubemap status and %kubemap logs for why engines "
                        "are gone; %kubemap scale N starts new ones"))
                    break
                if self._inflight:
                    done, _ = concurrent.futures.wait(
                        list(self._inflight), timeout=0.05,
                        return_when=concurrent.futures.FIRST_COMPLETED)
                    for ar in done:
                        self._collect(ar)
                else:
                    time.sleep(0.01)  # no engine ready: wait for one to join
                now = time.monotonic()
                if now - last_progress > PROGRESS_INTERVAL:
                    last_progress = now
                    session._notify("progress")
        except Exception as e:  # a bug or a broken connection: fail the map, loudly
            run.fail(e)
        finally:
            self._abort_inflight()
            self._finished.set()
            session._notify("progress")
            session._notify("map")

    def _fill(self, ready: list[int]) -> None:
        """Give every ready engine up to PIPELINE chunks."""
        engines = self.session.engines
        for eid in ready:
            info = engines.get(eid)
            while info is not None and info.inflight < PIPELINE:
                chunk = self.run.next_chunk(len(ready))
                if chunk is None:
                    return
                try:
                    ar = self.session._view(eid).apply_async(
                        remote.run_chunk, self.func, self.args[chunk.start:chunk.stop],
                        not self.return_exceptions)
                except Exception as e:
                    if not self.session.engine_alive(eid):
                        # it died before we heard: the chunk never left, nothing to count
                        self.run.release(chunk)
                        break
                    self.run.fail(UsageError(
                        f"cannot send {getattr(self.func, '__name__', self.func)!r} or its "
                        f"items to the engines: {type(e).__name__}: {e}",
                        fix="map a picklable function (defined at top level of a cell) "
                        "over picklable items"))
                    return
                info.inflight += 1
                self._inflight[ar] = (chunk, eid)

    def _collect(self, ar: Any) -> None:
        chunk, eid = self._inflight.pop(ar)
        info = self.session.engines.get(eid)
        if info is not None:
            info.inflight -= 1
        try:
            results, _, seconds = ar.get()
        except ipp.error.EngineError as e:
            self.run.lost(chunk, f"engine {eid} died ({e})")
        except ipp.error.RemoteError as e:
            if _engine_gone(e):
                self.run.lost(chunk, f"engine {eid} went away ({e.ename})")
                return
            unpicklable = "pickle" in str(e.evalue)
            self.run.fail(SessionError(
                f"a chunk could not run on engine {eid}: {e.ename}: {e.evalue}\n"
                f"{_ANSI.sub('', e.traceback or '')}".rstrip(),
                fix="return plain picklable data from the function (not generators, open "
                "files or locks)" if unpicklable else
                "usually a name or module the function needs is missing on the "
                "engines: define it in the cell body, --push it, or import it there"))
        else:
            self.run.complete(chunk, results, seconds)

    def _abort_inflight(self) -> None:
        """Drop queued chunks of a finished/failed/cancelled map from the engines."""
        if not self._inflight:
            return
        msg_ids = [m for ar in self._inflight for m in ar.msg_ids]
        client = self.session._client
        if client is not None:
            try:
                client.abort(msg_ids, block=False)
            except Exception:  # engines may be gone: nothing left to abort then
                pass
        # wait briefly so engines are idle again for the next cell (running items finish)
        concurrent.futures.wait(list(self._inflight), timeout=10)
        for ar in list(self._inflight):
            chunk, eid = self._inflight.pop(ar)
            info = self.session.engines.get(eid)
            if info is not None:
                info.inflight -= 1


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _engine_gone(e: Any) -> bool:
    return e.ename in ("EngineError", "DeadEngineError")


def _short_repr(args: tuple[Any, ...]) -> str:
    try:
        text = repr(args[0]) if len(args) == 1 else repr(args)
    except Exception:
        text = f"<{type(args[0]).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."
