from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
FLOAT64: DType

class Matrix(_message.Message):
    __slots__ = ("dtype", "dim", "rows", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    dim: int
    rows: int
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., dim: _Optional[int] = ..., rows: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClassDeltas(_message.Message):
    __slots__ = ("class_ids", "counts", "means")
    CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MEANS_FIELD_NUMBER: _ClassVar[int]
    class_ids: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    means: Matrix
    def __init__(self, class_ids: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ..., means: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("client_id", "space", "seq", "deltas")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    space: str
    seq: int
    deltas: ClassDeltas
    def __init__(self, client_id: _Optional[str] = ..., space: _Optional[str] = ..., seq: _Optional[int] = ..., deltas: _Optional[_Union[ClassDeltas, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("seq", "version", "classes", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    version: int
    classes: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., version: _Optional[int] = ..., classes: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PushStreamReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[PushReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[PushReply, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("space", "since", "dtype", "page_token", "max_reply_bytes", "epoch")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    space: str
    since: int
    dtype: DType
    page_token: str
    max_reply_bytes: int
    epoch: str
    def __init__(self, space: _Optional[str] = ..., since: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., page_token: _Optional[str] = ..., max_reply_bytes: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class PullReply(_message.Message):
    __slots__ = ("space", "version", "classes", "next_page_token", "epoch")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    space: str
    version: int
    classes: ClassDeltas
    next_page_token: str
    epoch: str
    def __init__(self, space: _Optional[str] = ..., version: _Optional[int] = ..., classes: _Optional[_Union[ClassDeltas, _Mapping]] = ..., next_page_token: _Optional[str] = ..., epoch: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("space", "since", "dtype", "max_reply_bytes", "epoch")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    space: str
    since: int
    dtype: DType
    max_reply_bytes: int
    epoch: str
    def __init__(self, space: _Optional[str] = ..., since: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., max_reply_bytes: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpaceInfo(_message.Message):
    __slots__ = ("space", "dim", "classes", "examples", "version")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    space: str
    dim: int
    classes: int
    examples: int
    version: int
    def __init__(self, space: _Optional[str] = ..., dim: _Optional[int] = ..., classes: _Optional[int] = ..., examples: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_classes_per_push", "max_message_bytes", "max_class_id_bytes", "max_dim", "max_count", "max_space_examples", "max_reply_bytes", "max_stream_window")
    MAX_CLASSES_PER_PUSH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CLASS_ID_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SPACE_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_WINDOW_FIELD_NUMBER: _ClassVar[int]
    max_classes_per_push: int
    max_message_bytes: int
    max_class_id_bytes: int
    max_dim: int
    max_count: int
    max_space_examples: int
    max_reply_bytes: int
    max_stream_window: int
    def __init__(self, max_classes_per_push: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_class_id_bytes: _Optional[int] = ..., max_dim: _Optional[int] = ..., max_count: _Optional[int] = ..., max_space_examples: _Optional[int] = ..., max_reply_bytes: _Optional[int] = ..., max_stream_window: _Optional[int] = ...) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("server_version", "store_id", "version", "spaces", "limits", "clients", "epoch")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPACES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    store_id: str
    version: int
    spaces: _containers.RepeatedCompositeFieldContainer[SpaceInfo]
    limits: Limits
    clients: int
    epoch: str
    def __init__(self, server_version: _Optional[str] = ..., store_id: _Optional[str] = ..., version: _Optional[int] = ..., spaces: _Optional[_Iterable[_Union[SpaceInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., clients: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...
