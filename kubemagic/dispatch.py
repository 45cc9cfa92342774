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
import logging
import re
import threading
import time
from typing import Any, Callable

import ipyparallel as ipp

from . import remote
from ._loop import wait_until
from .errors import KubemagicError, SessionError, StartupError, UsageError
from .events import Events, Topic
from .fleet import Fleet
from .chunking import ChunkPlanner
from .mapping import Chunk, MapRun, Progress
from .output import MapOutput
from .resume import Resume
from .progress import progress_display
from .recovery import Busy, Recovery

log = logging.getLogger("kubemagic")

#: chunks in flight per engine: two keep an engine busy while the next result travels
PIPELINE = 2
#: how often progress listeners are told (seconds)
PROGRESS_INTERVAL = 0.1


class MapHandle:
    """A running map: ``result()``, ``cancel()``, ``progress()``, ``done()``."""

    def __init__(self, fleet: Fleet, events: Events, func: Callable[..., Any],
                 args: list[tuple[Any, ...]], *, chunksize: int | str, ordered: bool,
                 retries: int, timeout: float | None, return_exceptions: bool,
                 starve_timeout: float, recovery: Recovery, speculate: bool = True,
                 resume: Resume | None = None) -> None:
        self.fleet = fleet
        self.recovery = recovery
        #: engines an early end of the map left busy, and what became of them (one
        #: sentence each: "engine 2 was still running item 17 after the timeout; ...")
        self.notes: list[str] = []
        self._timed_out = False
        self.events = events
        self.starve_timeout = starve_timeout
        self.func = func
        self.args = args
        self.timeout = timeout
        self.return_exceptions = return_exceptions
        self.resume = resume
        #: the variable its results go to (``--out``), for ``%kubemap wait NAME``
        self.name: str | None = None
        self.seen = False  # whether a caller of result() saw the outcome
        self.run = MapRun(
            total=len(args), planner=ChunkPlanner(len(args), chunksize), retries=retries,
            return_exceptions=return_exceptions, ordered=ordered,
            item_reprs=lambda i: _short_repr(self.args[i]), speculate=speculate,
            item_numbers=resume.todo.__getitem__ if resume else None,
        )
        self._cancel = threading.Event()
        self._engines_gone = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="kubemagic-map",
                                        daemon=True)
        self._inflight: dict[Any, tuple[Any, int]] = {}
        #: what the items print: kept whole, and the cell's share printed by result()
        self.output = MapOutput(item_numbers=resume.todo.__getitem__ if resume else None)
        self._checked: set[int] = set()  # chunks re-sent to name an unpicklable result
        self._sent: list[str] = []  # every chunk sent: the Client forgets them at the end
        self._callbacks: list[Callable[["MapHandle"], None]] = []
        self._callback_lock = threading.Lock()
        self._callbacks_ran = False

    # -- public --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return self._finished.is_set()

    def progress(self) -> Progress:
        return self.run.progress()

    def add_done_callback(self, callback: Callable[["MapHandle"], None]) -> None:
        """Call ``callback(handle)`` once the map has ended (at once if it has), from the
        map's own thread, before :meth:`done` turns true — so whoever sees the map done
        also sees what its callbacks did (``--background`` binds the results). A callback
        must not wait for the map."""
        with self._callback_lock:
            if not self._callbacks_ran:
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self, engines_gone: bool = False) -> None:
        """Stop handing out work and abort queued chunks; running items finish.

        ``engines_gone``: the session is shutting down: end at once, and say so (waiting
        for running items would only wait for engines that are being removed)."""
        self._engines_gone = self._engines_gone or engines_gone
        self._cancel.set()

    def result(self, timeout: float | None = None, progress: bool = False,
               keep: bool = True) -> list[Any]:
        """Wait for the map (widgets stay live), then return results or raise its error.

        A KeyboardInterrupt while waiting cancels the map and is re-raised; the engines
        and everything pushed to them stay. ``keep=False``: the caller takes the results
        over, the handle drops them (a blocking map's list is freed with the caller's).
        """
        display = progress_display(self.progress, self.run.total) if progress else None

        def tick() -> None:
            for line in self.output.take():
                print(line)
            if display:
                display.update()

        try:
            finished = wait_until(self._finished.is_set, timeout if timeout else 1e9,
                                  tick=tick, interval=0.02, event=self._finished)
            tick()
        except KeyboardInterrupt:
            self.cancel()
            self._finished.wait(30)
            raise
        finally:
            if display:
                display.close()
        if not finished:
            raise TimeoutError(f"map not finished after {timeout} s")
        self.seen = True  # someone waited: its outcome reached a cell
        value = self.value()
        if not keep:
            self.run.hand_over()
        return value

    def value(self) -> list[Any]:
        """The results of the ended map (no waiting), or its error raised."""
        results = self.run.results()
        return self.resume.merge(results, self.run.ordered) if self.resume else results

    def __repr__(self) -> str:
        p = self.progress()
        return f"<kubemagic map: {p.done}/{p.total} items, {p.state}>"

    # -- the loop (its own thread) ---------------------------------------------------------
    def _dispatch(self) -> None:
        run, fleet = self.run, self.fleet
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        last_progress = 0.0
        starved_since: float | None = None  # when the last ready engine went away
        try:
            while run.active:
                if self._cancel.is_set():
                    run.cancel(None if not self._engines_gone else
                               "the engines were shut down (Shut down / %kubemap stop)")
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self._timed_out = True
                    run.fail(KubemagicError(
                        f"the map did not finish within {self.timeout} s "
                        f"({run.done} of {run.total} items done)",
                        fix="raise --timeout, add engines (%kubemap scale N), or "
                        "check the engines' logs for a hang"))
                    break
                fleet.refresh()
                self._fill(fleet.ready())
                if self._inflight or fleet.ready():
                    starved_since = None
                elif starved_since is None:
                    starved_since = time.monotonic()
                elif (why := self.recovery.stopped()) is not None:
                    run.fail(StartupError(
                        f"the engines stopped ({why}) with {run.done} of {run.total} "
                        "items done",
                        fix="see %kubemap logs and %kubemap status for why; to go on, "
                        "%kubemap stop (or session.stop()) and run the cell again: a new "
                        "fleet starts"))
                    break
                elif time.monotonic() - starved_since > self.starve_timeout:
                    run.fail(StartupError(
                        f"no engine has been available for {self.starve_timeout:.0f} s "
                        f"({run.done} of {run.total} items done)",
                        fix="look at %kubemap status and %kubemap logs for why engines "
                        "are gone; %kubemap scale N starts new ones"))
                    break
                if self._inflight:
                    done, _ = concurrent.futures.wait(
                        list(self._inflight), timeout=0.05,
                        return_when=concurrent.futures.FIRST_COMPLETED)
                    for ar in done:
                        if ar in self._inflight:  # not dropped as a redundant copy
                            self._collect(ar)
                else:
                    time.sleep(0.01)  # no engine ready: wait for one to join
                now = time.monotonic()
                if now - last_progress > PROGRESS_INTERVAL:
                    last_progress = now
                    self.output.poll()
                    self.events.emit(Topic.PROGRESS)
        except Exception as e:  # a bug or a broken connection: fail the map, loudly
            run.fail(e)
        finally:
            self._abort_inflight()
            self.args = []  # the items are not needed any more: a 10M-item map frees them
            if self.resume is not None:
                self.resume.finish()
            self.output.close()
            self.fleet.forget(self._sent)
            self._run_callbacks()
            self._finished.set()
            self.events.emit(Topic.PROGRESS)
            self.events.emit(Topic.MAP)

    def _run_callbacks(self) -> None:
        """Every done-callback, including one added while the others run."""
        while True:
            with self._callback_lock:
                callbacks, self._callbacks = self._callbacks, []
                if not callbacks:
                    self._callbacks_ran = True
                    return
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:  # a broken callback must not hide the map's own result
                    log.warning("a map's done-callback failed", exc_info=True)

    def _fill(self, ready: list[int]) -> None:
        """Give every ready engine up to PIPELINE chunks; an idle one may get a copy of a
        straggling chunk once nothing else is left (see :mod:`kubemagic.speculation`)."""
        fleet = self.fleet
        # one probe per engine until the first chunk is timed: a second one queued behind
        # it would be sized blind too (64 engines sent 128 probes of 16 no-op items)
        depth = PIPELINE if self.run.planner.item_seconds is not None else 1
        for eid in ready:
            while fleet.inflight(eid) < depth and not self._holds_suspect(eid):
                chunk = self.run.next_chunk(len(ready), engine=eid)
                if chunk is None and fleet.inflight(eid) == 0:
                    chunk = self.run.speculative_chunk(engine=eid)
                if chunk is None:
                    break
                if self.run.suspect(chunk) and fleet.inflight(eid):
                    self.run.release(chunk)  # it runs alone, on an engine with nothing else
                    break
                try:
                    self._send(eid, chunk)
                except Exception as e:
                    if not fleet.alive(eid):
                        # it died before we heard: the chunk never left, nothing to count
                        self.run.release(chunk)
                        break
                    self.run.fail(UsageError(
                        f"cannot send {getattr(self.func, '__name__', self.func)!r} or its "
                        f"items to the engines: {type(e).__name__}: {e}",
                        fix="map a picklable function (defined at top level of a cell) "
                        "over picklable items"))
                    return

    def _holds_suspect(self, eid: int) -> bool:
        # the scan only once an engine died: it is on the dispatcher's per-chunk path
        return self.run.has_suspects and any(
            e == eid and self.run.suspect(c) for c, e in self._inflight.values())

    def _send(self, eid: int, chunk: Chunk) -> Any:
        """One chunk to one engine; its items' prints are followed from now on."""
        ar = self.fleet.submit(
            eid, remote.run_chunk, self.func, self.args[chunk.start:chunk.stop],
            not self.return_exceptions, chunk.start, chunk.id in self._checked)
        self._inflight[ar] = (chunk, eid)
        self._sent.extend(ar.msg_ids)
        self.output.watch(ar, eid)
        return ar

    def _collect(self, ar: Any) -> None:
        chunk, eid = self._inflight.pop(ar)
        self.fleet.settle(eid)
        self.output.finished(ar)
        try:
            results, first_failure, seconds, handed_back = ar.get()
        except ipp.error.EngineError as e:
            self._lost(chunk, eid, f"engine {eid} died ({e})")
        except ipp.error.RemoteError as e:
            if _engine_gone(e):
                self._lost(chunk, eid, f"engine {eid} went away ({e.ename})")
                return
            unpicklable = "pickle" in str(e.evalue)
            if unpicklable and chunk.id not in self._checked and self.fleet.alive(eid):
                # a result could not be sent back: run the chunk again, pickling each
                # result on the engine, so the error names the item
                self._checked.add(chunk.id)
                self._send(eid, chunk)
                return
            self.run.fail(SessionError(
                f"a chunk could not run on engine {eid}: {e.ename}: {e.evalue}\n"
                f"{_ANSI.sub('', e.traceback or '')}".rstrip(),
                fix="return plain picklable data from the function (not generators, open "
                "files or locks)" if unpicklable else
                "usually a name or module the function needs is missing on the "
                "engines: define it in the cell body, --push it, or import it there"))
        else:
            if handed_back >= 0:  # its engine is leaving: the rest of the chunk is requeued
                self.fleet.leaving(eid)
            if self.resume is not None:
                self.resume.store_chunk(chunk.start, results, self.output.note)
            for twin in self.run.complete(chunk, results, seconds, clean=first_failure < 0):
                self._drop(twin)

    def _lost(self, chunk: Chunk, eid: int, reason: str) -> None:
        """The engine of ``chunk`` died. When that names a poison item, the error says
        what the engine died of: the platform is asked first (it may take a moment)."""
        death = self.recovery.death(eid) if self.run.blames(chunk) else None
        self.run.lost(chunk, reason, death, eid)

    def _drop(self, chunk: Any) -> None:
        """The other copy of a speculated chunk lost the race: abort it if still queued,
        and stop waiting for it (a running copy finishes; its result is ignored)."""
        for ar, (out, eid) in list(self._inflight.items()):
            if out is chunk:
                del self._inflight[ar]
                self.output.finished(ar)
                self.fleet.abort(ar.msg_ids)
                ar.add_done_callback(lambda _f, eid=eid: self.fleet.settle(eid))

    def _abort_inflight(self) -> None:
        """Drop queued chunks of an ended map from the engines, and free the engines that
        still run one (:mod:`kubemagic.recovery`): the next map finds them idle, or new.
        Not when the session is shutting down: its engines are going anyway."""
        if not self._inflight:
            return
        self.fleet.abort([m for ar in self._inflight for m in ar.msg_ids])
        if not self._engines_gone and self.run.state != "done":
            when = ("after the timeout" if self._timed_out else "when the map was cancelled"
                    if self.run.state == "cancelled" else "when the map failed")
            busy = [Busy(ar, eid, c.start, c.stop) for ar, (c, eid) in self._inflight.items()]
            self.notes = self.recovery.release(busy, self.run.item_number, when)
            if self.notes:
                self.run.error = _noted(self.run.error, self.notes)
        for ar in list(self._inflight):
            _, eid = self._inflight.pop(ar)
            self.fleet.settle(eid)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _noted(error: BaseException | None, notes: list[str]) -> BaseException | None:
    """The map's error, saying what became of the engines it left busy."""
    text = "; ".join(notes)
    if type(error) in (KubemagicError, SessionError, StartupError):
        return type(error)(f"{error.message}; {text}", fix=error.fix)  # type: ignore[union-attr]
    if error is not None:
        error.add_note(text)
    return error


def _engine_gone(e: Any) -> bool:
    return e.ename in ("EngineError", "DeadEngineError")


def _short_repr(args: tuple[Any, ...]) -> str:
    try:
        text = repr(args[0]) if len(args) == 1 else repr(args)
    except Exception:
        text = f"<{type(args[0]).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."
