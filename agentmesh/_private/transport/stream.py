"""`FrameStream`: frames over one gRPC stream, a large one in pieces.

gRPC caps the size of every message a server accepts with one limit for the whole
server (``grpc.max_receive_message_length``), fixed before any peer is known; no
limit can be set per stream or per method on the server side. A node sets it low,
`MAX_MESSAGE` (64 KiB), on its server and on the channels it dials, so a peer that
has not proved the cluster token can make it hold little: gRPC refuses a larger
message from the length in its header and ends that call (measured: eight 50 MiB
hellos grow a node by under 1 MiB; with a 64 MiB limit, by hundreds). After the
handshake a frame may be larger, up to `MAX_FRAME`: it travels as the `Piece`s of its
serialized bytes, put back together here. Before it, a piece is refused.

What it costs authenticated traffic: a frame is serialized once, as before (gRPC no
longer does it), and its length compared; one that is larger than a message is
sliced into pieces on sending and joined on receipt (one more copy of its bytes,
and a gRPC message per 64 KiB).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from ...v1 import wire_pb2
from ..kernel.errors import AgentmeshError, AuthError
from .frames import MalformedFrame

__all__ = ["MAX_FRAME", "MAX_MESSAGE", "FrameStream"]

#: The largest gRPC message a node sends or accepts, before the handshake or after.
MAX_MESSAGE = 64 * 1024
#: The largest frame, once put back together from its pieces.
MAX_FRAME = 64 * 1024 * 1024
#: Bytes of a frame per piece: a `Frame` holding a `Piece` adds 8 bytes of tags and
#: lengths to them, and the message stays within `MAX_MESSAGE`.
PIECE = MAX_MESSAGE - 64

RawRead = Callable[[], Awaitable[bytes | None]]  # None: the peer ended the stream
RawWrite = Callable[[bytes], Awaitable[None]]


def parse(data: bytes) -> wire_pb2.Frame:
    """One frame from its bytes; raises `MalformedFrame`."""
    try:
        frame: wire_pb2.Frame = wire_pb2.Frame.FromString(data)
    except DecodeError:
        raise MalformedFrame(f"{len(data):,} bytes that are not a frame") from None
    return frame


class FrameStream:
    """Reads and writes whole frames on a gRPC stream of raw messages. Pieces are
    accepted once `authenticated` is set (the handshake sets it)."""

    __slots__ = ("_read", "_write", "authenticated")

    def __init__(self, read: RawRead, write: RawWrite) -> None:
        self._read = read
        self._write = write
        self.authenticated = False

    async def read(self) -> wire_pb2.Frame | None:
        """The next frame, None once the peer ended the stream. Raises
        `MalformedFrame` for bytes that are no frame or pieces that make none, and
        `AuthError` for a piece before the handshake."""
        data = await self._read()
        if data is None:
            return None
        frame = parse(data)
        if frame.WhichOneof("body") != "piece":
            return frame
        if not self.authenticated:
            raise AuthError("a piece of a frame before the handshake")
        pieces: list[bytes] = []
        size = 0
        while True:
            piece = frame.piece
            pieces.append(piece.data)
            size += len(piece.data)
            if size > MAX_FRAME:
                raise MalformedFrame(f"a frame of more than {MAX_FRAME:,} bytes")
            if piece.last:
                return parse(b"".join(pieces))
            data = await self._read()
            if data is None:
                return None  # ended mid-frame: nothing of it is delivered
            frame = parse(data)
            body = frame.WhichOneof("body")
            if body == "refusal":  # the peer gave up writing this frame, and says why
                return frame
            if body != "piece":
                raise MalformedFrame(f"a {body} frame amid the pieces of another")

    async def write(self, frame: wire_pb2.Frame) -> None:
        """Send ``frame``, in pieces if it is larger than a message. Raises
        `AgentmeshError` for a frame over `MAX_FRAME` (nothing of it is sent)."""
        data = frame.SerializeToString()
        if len(data) <= MAX_MESSAGE:
            await self._write(data)
            return
        if len(data) > MAX_FRAME:
            raise AgentmeshError(f"a frame of {len(data):,} bytes, over {MAX_FRAME:,}")
        last = len(data) - PIECE
        for start in range(0, len(data), PIECE):
            piece = wire_pb2.Piece(data=data[start : start + PIECE], last=start >= last)
            await self._write(wire_pb2.Frame(piece=piece).SerializeToString())
