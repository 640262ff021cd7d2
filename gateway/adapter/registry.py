"""Live calls on this node, by call id."""

from __future__ import annotations

from typing import Generic, TypeVar

H = TypeVar("H")


class Registry(Generic[H]):
    """Maps call id -> the handle that owns the call's socket."""

    def __init__(self) -> None:
        self._calls: dict[str, H] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> H | None:
        return self._calls.get(call_id)

    def add(self, call_id: str, handle: H) -> H | None:
        """Register a call; returns the handle it replaces, if a socket already had that id."""
        previous = self._calls.get(call_id)
        self._calls[call_id] = handle
        return previous

    def remove(self, call_id: str, handle: H) -> None:
        # Only the current owner may remove: a replaced socket closing late
        # must not unregister its successor.
        if self._calls.get(call_id) is handle:
            del self._calls[call_id]

    def handles(self) -> list[H]:
        return list(self._calls.values())
