"""A small named-component registry (datasets, judges, suites): duplicates raise, unknown names suggest."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from safety_lab.errors import SafetyLabError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SafetyLabError(self.kind, f"unknown name {name!r} (known: {', '.join(sorted(self._items))}){hint}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
