from fedrecon.proto.v1 import recon_pb2 as _recon_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RevokeClientRequest(_message.Message):
    __slots__ = ("client_id", "disable_tokens")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DISABLE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    disable_tokens: bool
    def __init__(self, client_id: _Optional[str] = ..., disable_tokens: _Optional[bool] = ...) -> None: ...

class RevokeClientReply(_message.Message):
    __slots__ = ("version", "classes", "tokens_disabled", "actor")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_DISABLED_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    version: int
    classes: int
    tokens_disabled: int
    actor: str
    def __init__(self, version: _Optional[int] = ..., classes: _Optional[int] = ..., tokens_disabled: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("client_id", "last_seq", "classes", "examples")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    last_seq: int
    classes: int
    examples: int
    def __init__(self, client_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., classes: _Optional[int] = ..., examples: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("version", "kind", "client_id", "actor", "at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: str
    client_id: str
    actor: str
    at: float
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[str] = ..., client_id: _Optional[str] = ..., actor: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("store_id", "version", "spaces", "clients", "audit", "robust_spaces")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPACES_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    ROBUST_SPACES_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    version: int
    spaces: _containers.RepeatedCompositeFieldContainer[_recon_pb2.SpaceInfo]
    clients: _containers.RepeatedCompositeFieldContainer[ClientStats]
    audit: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    robust_spaces: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, store_id: _Optional[str] = ..., version: _Optional[int] = ..., spaces: _Optional[_Iterable[_Union[_recon_pb2.SpaceInfo, _Mapping]]] = ..., clients: _Optional[_Iterable[_Union[ClientStats, _Mapping]]] = ..., audit: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., robust_spaces: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("space", "dtype", "per_client")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    space: str
    dtype: _recon_pb2.DType
    per_client: bool
    def __init__(self, space: _Optional[str] = ..., dtype: _Optional[_Union[_recon_pb2.DType, str]] = ..., per_client: _Optional[bool] = ...) -> None: ...

class ExportTable(_message.Message):
    __slots__ = ("client_id", "classes")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    classes: _recon_pb2.ClassDeltas
    def __init__(self, client_id: _Optional[str] = ..., classes: _Optional[_Union[_recon_pb2.ClassDeltas, _Mapping]] = ...) -> None: ...

class ExportReply(_message.Message):
    __slots__ = ("space", "version", "tables")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    space: str
    version: int
    tables: _containers.RepeatedCompositeFieldContainer[ExportTable]
    def __init__(self, space: _Optional[str] = ..., version: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[ExportTable, _Mapping]]] = ...) -> None: ...
