from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetOrderSummaryRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class OrderSummary(_message.Message):
    __slots__ = ("user_id", "order_count", "total_minor")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MINOR_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    order_count: int
    total_minor: int
    def __init__(self, user_id: _Optional[str] = ..., order_count: _Optional[int] = ..., total_minor: _Optional[int] = ...) -> None: ...
