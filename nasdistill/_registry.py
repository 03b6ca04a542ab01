"""A tiny name -> object registry, shared by datasets, methods, spaces and samplers."""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. ``kind`` is used in error messages ("unknown method 'x'")."""

    def __init__(self, kind: str, hint: str | None = None):
        self.kind = kind
        self.hint = hint
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(o: T) -> T:
            key = name.lower()
            if key in self._items and not overwrite and self._items[key] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named (:class:`UnknownNameError` when absent)."""
        obj = self.get(name)
        del self._items[str(name).lower()]
        return obj

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(key, list(self._items), n=1)
        fix = f"did you mean {close[0]!r}? " if close else ""
        fix += f"choose one of: {', '.join(sorted(self._items))}"
        if self.hint:
            fix += f" ({self.hint})"
        raise UnknownNameError(f"unknown {self.kind} {name!r}", fix)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

