from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("codec", "data")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    codec: str
    data: bytes
    def __init__(self, codec: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("target", "method", "args", "kwargs", "corr", "chain", "sender", "time_left", "traceparent", "tracestate", "window")
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    TARGET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    CORR_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    target: str
    method: str
    args: _containers.RepeatedCompositeFieldContainer[Value]
    kwargs: _containers.MessageMap[str, Value]
    corr: int
    chain: int
    sender: str
    time_left: float
    traceparent: str
    tracestate: str
    window: int
    def __init__(self, target: _Optional[str] = ..., method: _Optional[str] = ..., args: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., kwargs: _Optional[_Mapping[str, Value]] = ..., corr: _Optional[int] = ..., chain: _Optional[int] = ..., sender: _Optional[str] = ..., time_left: _Optional[float] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ..., window: _Optional[int] = ...) -> None: ...

class StreamItems(_message.Message):
    __slots__ = ("corr", "items", "end", "error")
    CORR_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    corr: int
    items: _containers.RepeatedScalarFieldContainer[bytes]
    end: bool
    error: Value
    def __init__(self, corr: _Optional[int] = ..., items: _Optional[_Iterable[bytes]] = ..., end: _Optional[bool] = ..., error: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("corr", "ok", "value")
    CORR_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    corr: int
    ok: bool
    value: Value
    def __init__(self, corr: _Optional[int] = ..., ok: _Optional[bool] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("envelopes", "replies", "credit", "order", "control", "pickled", "credited", "credits", "streams", "stream_credited", "stream_credits", "cancels")
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    PICKLED_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAM_CREDITED_FIELD_NUMBER: _ClassVar[int]
    STREAM_CREDITS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    replies: _containers.RepeatedCompositeFieldContainer[Reply]
    credit: int
    order: _containers.RepeatedScalarFieldContainer[bool]
    control: _containers.RepeatedScalarFieldContainer[bytes]
    pickled: bytes
    credited: _containers.RepeatedScalarFieldContainer[str]
    credits: _containers.RepeatedScalarFieldContainer[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamItems]
    stream_credited: _containers.RepeatedScalarFieldContainer[int]
    stream_credits: _containers.RepeatedScalarFieldContainer[int]
    cancels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., replies: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ..., credit: _Optional[int] = ..., order: _Optional[_Iterable[bool]] = ..., control: _Optional[_Iterable[bytes]] = ..., pickled: _Optional[bytes] = ..., credited: _Optional[_Iterable[str]] = ..., credits: _Optional[_Iterable[int]] = ..., streams: _Optional[_Iterable[_Union[StreamItems, _Mapping]]] = ..., stream_credited: _Optional[_Iterable[int]] = ..., stream_credits: _Optional[_Iterable[int]] = ..., cancels: _Optional[_Iterable[int]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "nonce")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nonce: bytes
    def __init__(self, node_id: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("node_id", "nonce", "mac", "window")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nonce: bytes
    mac: bytes
    window: int
    def __init__(self, node_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., mac: _Optional[bytes] = ..., window: _Optional[int] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("mac", "window")
    MAC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    window: int
    def __init__(self, mac: _Optional[bytes] = ..., window: _Optional[int] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Piece(_message.Message):
    __slots__ = ("data", "last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    last: bool
    def __init__(self, data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("hello", "challenge", "proof", "batch", "refusal", "piece")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    challenge: Challenge
    proof: Proof
    batch: Batch
    refusal: Refusal
    piece: Piece
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., proof: _Optional[_Union[Proof, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., piece: _Optional[_Union[Piece, _Mapping]] = ...) -> None: ...
