"""Framing: many packed messages on one byte stream, each as a u32 LE length then the message.

Works with file-like objects (``write``/``read``) and socket-like ones (``send``/``recv``).
The reader checks each frame length against ``Limits`` before reading the frame, reads in
bounded chunks, stops cleanly at end-of-stream on a frame boundary, and raises
``MalformedMessage`` if the stream ends inside a frame. Only an empty read is the end of the stream: a
non-blocking stream with nothing to read yet (``read`` returning None, ``BlockingIOError``) is waited on, as
a blocking read would, and a frame written in several pieces arrives whole; the writer likewise waits until a
non-blocking stream has taken the whole frame.
"""

from __future__ import annotations

import io
import select
import struct
import time
from collections.abc import Iterator
from typing import Any

from .errors import LimitExceeded, MalformedMessage
from .message import LatentMessage
from .wire import DEFAULT_LIMITS, Limits, pack, unpack

__all__ = ["read_frames", "read_messages", "write_frame", "write_message"]

_LEN = struct.Struct("<I")
_CHUNK = 1 << 20
_MIN_WAIT_S, _MAX_WAIT_S = 0.0005, 0.05
"""Polling interval bounds for a non-blocking stream without a file descriptor."""


def write_frame(stream: Any, data: bytes) -> int:
    """Write one frame (length prefix + ``data``); returns bytes written.

    Uses ``send`` (or ``sendall``) if the stream has it, else ``write``, until all is written; a non-blocking
    stream that takes nothing for now (``BlockingIOError``, or ``None`` from a raw stream) is waited on. ``None``
    from any other writer counts as all written.
    """
    if len(data) > 0xFFFFFFFF:
        raise LimitExceeded(f"frame of {len(data)} bytes does not fit a u32 length")
    frame = _LEN.pack(len(data)) + data
    if hasattr(stream, "sendall") and not hasattr(stream, "send"):
        stream.sendall(frame)
        return len(frame)
    put = stream.send if hasattr(stream, "send") else stream.write
    view, wait = memoryview(frame), _MIN_WAIT_S
    while view:
        try:
            written = put(view)
        except BlockingIOError as err:
            written = getattr(err, "characters_written", 0)
        if written is None and not isinstance(stream, io.RawIOBase):
            written = len(view)
        view = view[written or 0 :]
        if view and not written:
            wait = _wait(stream, wait, write=True)
    return len(frame)


def write_message(stream: Any, msg: LatentMessage, *, key: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> int:
    """Pack ``msg`` (signed if ``key``) and write it as one frame; returns bytes written."""
    return write_frame(stream, pack(msg, key=key, limits=limits))


def _read_some(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes, at least one unless the stream has ended; waits while a non-blocking stream has none."""
    wait = _MIN_WAIT_S
    while True:
        try:
            chunk = stream.recv(n) if hasattr(stream, "recv") else stream.read(n)
        except BlockingIOError:
            chunk = None
        if chunk is not None:
            return bytes(chunk)
        wait = _wait(stream, wait, write=False)


def _wait(stream: Any, wait: float, *, write: bool) -> float:
    """Block until ``stream`` can be read (or written); without a file descriptor, sleep ``wait`` seconds.
    Returns the next polling interval."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        time.sleep(wait)
        return min(2 * wait, _MAX_WAIT_S)
    select.select([] if write else [fd], [fd] if write else [], [])
    return wait


def _read_exact(stream: Any, n: int, what: str) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = _read_some(stream, min(n - got, _CHUNK))
        if not chunk:
            raise MalformedMessage(f"truncated stream: {what} needs {n} bytes, got {got}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frames(stream: Any, *, max_frame_bytes: int = DEFAULT_LIMITS.max_message_bytes) -> Iterator[bytes]:
    """Yield each frame's bytes until end-of-stream; ``LimitExceeded`` before reading an oversized frame."""
    while True:
        first = _read_some(stream, _LEN.size)
        if not first:
            return
        head = first + (_read_exact(stream, _LEN.size - len(first), "frame length") if len(first) < _LEN.size else b"")
        (length,) = _LEN.unpack(head)
        if length > max_frame_bytes:
            raise LimitExceeded(f"frame of {length} bytes > max frame {max_frame_bytes}")
        yield _read_exact(stream, length, f"frame of {length} bytes")


def read_messages(
    stream: Any,
    *,
    key: bytes | None = None,
    require_signature: bool | None = None,
    expect_fingerprint: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[LatentMessage]:
    """Yield each message on ``stream``, validated exactly as ``unpack`` does."""
    for frame in read_frames(stream, max_frame_bytes=limits.max_message_bytes):
        yield unpack(
            frame, key=key, require_signature=require_signature, expect_fingerprint=expect_fingerprint, limits=limits
        )
