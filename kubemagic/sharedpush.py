"""Large pushes to engines on the kernel's own machine: one shared-memory file, not N copies.

A push through the controller sends the whole value to every engine: 100 MB to 16 local
engines is 1.6 GB through one socket and 16 private copies in RAM, 6.9x the time of a push
to one engine (bench/results/scale_2026-11-29_session6.md). Local engines run on the
kernel's machine as its user, so the kernel writes the pickled names once to a file in
``/dev/shm`` (pickle protocol 5: arrays and other buffers go out of band, page-aligned,
without a copy into the pickle) and sends each engine only the file's layout. Each engine
maps the file copy-on-write and unpickles from the mapping: arrays become views of the
shared pages (writable; a write copies only the page written), so 16 engines hold one copy.

The kernel removes the file as soon as every engine has mapped it (the mappings outlive
the name). A kernel killed in that window leaves the file behind; the next push from any
kernel of this user removes files whose writer is gone (the writer's pid is in the name).
Engines that join later get the value the usual way, from the replay log.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

from .serialize import NotebookPickler, main_namespace

#: below this many bytes a message through the controller is as quick as a file
THRESHOLD = 1 << 20
#: where the files go: a RAM-backed file system on Linux; elsewhere pushes take the socket
SHM_DIR = Path("/dev/shm")
_PREFIX = "kubemagic-push-"
#: buffers start on page boundaries, so arrays are aligned and pages are not shared by two
_ALIGN = mmap.PAGESIZE


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class SharedPush:
    """A pushed namespace written once to a shared-memory file; :meth:`close` removes it."""

    def __init__(self, path: Path, head: int, spans: list[tuple[int, int]]) -> None:
        self.path = path
        #: what each engine needs to load the names: the file, the pickle's length, and
        #: each out-of-band buffer's (offset, length)
        self.args = (str(path), head, spans)

    @classmethod
    def write(cls, namespace: dict[str, Any]) -> SharedPush | None:
        """The file for ``namespace``, or None when a plain message is as good: the value
        is small, or this machine has no ``/dev/shm``. Raises what pickling raises."""
        if not SHM_DIR.is_dir() or not os.access(SHM_DIR, os.W_OK):
            return None
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        NotebookPickler(out, protocol=5, buffer_callback=buffers.append).dump(namespace)
        try:
            views = [b.raw() for b in buffers]
        except BufferError:  # a non-contiguous buffer: only the socket path takes it
            return None
        head = out.getbuffer()
        if len(head) + sum(v.nbytes for v in views) < THRESHOLD:
            return None
        _remove_orphans()
        path = SHM_DIR / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        spans, offset = [], _aligned(len(head))
        for v in views:
            spans.append((offset, v.nbytes))
            offset = _aligned(offset + v.nbytes)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, max(offset, 1))
            _write_at(fd, head, 0)
            for v, (at, _) in zip(views, spans):
                _write_at(fd, v, at)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(path, len(head), spans)

    def close(self) -> None:
        """Remove the file's name; engines that mapped it keep their mapping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _remove_orphans() -> None:
    """Remove files left by kernels that died between writing a push and removing it."""
    for path in SHM_DIR.glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


def load(path: str, head: int, spans: list[tuple[int, int]]) -> None:
    """On an engine: bind the pushed names from the file, sharing its pages."""
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    view = memoryview(mapping)
    namespace = pickle.loads(view[:head], buffers=[view[at:at + n] for at, n in spans])
    main_namespace().update(namespace)
