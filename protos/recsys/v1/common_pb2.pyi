from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_LOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_AVAILABLE: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_FAILED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_UNLOADED: _ClassVar[ModelVersionState]
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_LOADING: ModelVersionState
MODEL_VERSION_STATE_AVAILABLE: ModelVersionState
MODEL_VERSION_STATE_FAILED: ModelVersionState
MODEL_VERSION_STATE_UNLOADED: ModelVersionState

class UserFeatures(_message.Message):
    __slots__ = ("age", "gender", "occupation", "zip_code", "watched_item_ids")
    AGE_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_FIELD_NUMBER: _ClassVar[int]
    ZIP_CODE_FIELD_NUMBER: _ClassVar[int]
    WATCHED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    age: int
    gender: str
    occupation: str
    zip_code: str
    watched_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, age: _Optional[int] = ..., gender: _Optional[str] = ..., occupation: _Optional[str] = ..., zip_code: _Optional[str] = ..., watched_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GenreFilter(_message.Message):
    __slots__ = ("include_genres", "exclude_genres")
    INCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_GENRES_FIELD_NUMBER: _ClassVar[int]
    include_genres: _containers.RepeatedScalarFieldContainer[str]
    exclude_genres: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, include_genres: _Optional[_Iterable[str]] = ..., exclude_genres: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "error", "size", "is_default", "genres")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: ModelVersionState
    error: str
    size: int
    is_default: bool
    genres: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., error: _Optional[str] = ..., size: _Optional[int] = ..., is_default: _Optional[bool] = ..., genres: _Optional[_Iterable[str]] = ...) -> None: ...

class ServiceModelStatus(_message.Message):
    __slots__ = ("service", "address", "versions", "shard_index", "num_shards", "error")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    shard_index: int
    num_shards: int
    error: str
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
