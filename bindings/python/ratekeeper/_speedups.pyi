# Type stubs of the C hot path (src/_speedups.c). Internal: use ratekeeper.Policy.
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

_Key = Union[str, bytes, bytearray, memoryview]

class Handle:
    def __init__(self, address: int) -> None: ...
    def invalidate(self) -> None: ...
    @property
    def closed(self) -> bool: ...

class DecisionBase:
    allowed: bool
    banned: bool
    shadow_denied: bool
    limit: int
    remaining: int
    retry_after_ns: int
    reset_after_ns: int
    limit_index: int
    def __new__(
        cls,
        allowed: bool,
        limit: int,
        remaining: int,
        retry_after_ns: int,
        reset_after_ns: int,
        limit_index: int = ...,
        banned: bool = ...,
        shadow_denied: bool = ...,
    ) -> Any: ...
    def _astuple(self) -> Tuple[bool, int, int, int, int, int, bool, bool]: ...

class Checker:
    def __init__(self, handle: Handle, policy_id: int, concurrency: bool = ...) -> None: ...
    @property
    def id(self) -> int: ...
    def check(self, key: _Key, cost: int = ..., now_ns: Optional[int] = ...) -> Any: ...
    def peek(self, key: _Key, cost: int = ..., now_ns: Optional[int] = ...) -> Any: ...
    def refund(self, key: _Key, cost: int = ..., now_ns: Optional[int] = ...) -> bool: ...

def init(addresses: Dict[str, Optional[int]], decision_type: type, error_handler: Callable[[int, str], None]) -> None: ...
def check_many(handle: Handle, items: Sequence[Tuple[Any, ...]], now_ns: Optional[int]) -> Tuple[Any, int]: ...
def rate_limit_fields(
    decision: DecisionBase, policy_value: str, names: Tuple[str, ...], legacy: bool, now_s: int
) -> List[Tuple[str, str]]: ...
