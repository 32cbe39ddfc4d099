from recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserLookup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_LOOKUP_UNSPECIFIED: _ClassVar[UserLookup]
    USER_LOOKUP_FOUND: _ClassVar[UserLookup]
    USER_LOOKUP_UNKNOWN_USER: _ClassVar[UserLookup]
    USER_LOOKUP_NOT_IN_BUNDLE: _ClassVar[UserLookup]
USER_LOOKUP_UNSPECIFIED: UserLookup
USER_LOOKUP_FOUND: UserLookup
USER_LOOKUP_UNKNOWN_USER: UserLookup
USER_LOOKUP_NOT_IN_BUNDLE: UserLookup

class Query(_message.Message):
    __slots__ = ("vector", "exclude_item_ids", "most_popular", "genre_filter", "user_id", "exclude_seen", "lookup_user_vector")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MOST_POPULAR_FIELD_NUMBER: _ClassVar[int]
    GENRE_FILTER_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_USER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    most_popular: bool
    genre_filter: _common_pb2.GenreFilter
    user_id: str
    exclude_seen: bool
    lookup_user_vector: bool
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., most_popular: _Optional[bool] = ..., genre_filter: _Optional[_Union[_common_pb2.GenreFilter, _Mapping]] = ..., user_id: _Optional[str] = ..., exclude_seen: _Optional[bool] = ..., lookup_user_vector: _Optional[bool] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("queries", "k", "model_version", "exact")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    k: int
    model_version: str
    exact: bool
    def __init__(self, queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., k: _Optional[int] = ..., model_version: _Optional[str] = ..., exact: _Optional[bool] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("item_ids", "scores", "titles", "user_lookup")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TITLES_FIELD_NUMBER: _ClassVar[int]
    USER_LOOKUP_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    titles: _containers.RepeatedScalarFieldContainer[str]
    user_lookup: UserLookup
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., titles: _Optional[_Iterable[str]] = ..., user_lookup: _Optional[_Union[UserLookup, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "model_version", "shard_index", "num_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    model_version: str
    shard_index: int
    num_shards: int
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., model_version: _Optional[str] = ..., shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class GetItemEmbeddingsRequest(_message.Message):
    __slots__ = ("item_ids", "model_version")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ItemEmbedding(_message.Message):
    __slots__ = ("item_id", "found", "values", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    found: bool
    values: _containers.RepeatedScalarFieldContainer[float]
    title: str
    def __init__(self, item_id: _Optional[str] = ..., found: _Optional[bool] = ..., values: _Optional[_Iterable[float]] = ..., title: _Optional[str] = ...) -> None: ...

class GetItemEmbeddingsResponse(_message.Message):
    __slots__ = ("items", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemEmbedding]
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[ItemEmbedding, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
