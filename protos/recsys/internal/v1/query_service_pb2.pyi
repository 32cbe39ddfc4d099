from recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedUsersRequest(_message.Message):
    __slots__ = ("user_ids", "model_version", "include_seen", "user_features", "skip_unknown_users")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    SKIP_UNKNOWN_USERS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    include_seen: bool
    user_features: _containers.RepeatedCompositeFieldContainer[_common_pb2.UserFeatures]
    skip_unknown_users: bool
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., include_seen: _Optional[bool] = ..., user_features: _Optional[_Iterable[_Union[_common_pb2.UserFeatures, _Mapping]]] = ..., skip_unknown_users: _Optional[bool] = ...) -> None: ...

class UserEmbedding(_message.Message):
    __slots__ = ("user_id", "values", "known", "seen_item_ids", "from_features")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SEEN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    FROM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    known: bool
    seen_item_ids: _containers.RepeatedScalarFieldContainer[str]
    from_features: bool
    def __init__(self, user_id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., known: _Optional[bool] = ..., seen_item_ids: _Optional[_Iterable[str]] = ..., from_features: _Optional[bool] = ...) -> None: ...

class EmbedUsersResponse(_message.Message):
    __slots__ = ("embeddings", "model_version", "dimension")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[UserEmbedding]
    model_version: str
    dimension: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[UserEmbedding, _Mapping]]] = ..., model_version: _Optional[str] = ..., dimension: _Optional[int] = ...) -> None: ...
