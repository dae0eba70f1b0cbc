"""``__slots__`` for frozen dataclasses on every supported Python (3.9 has no ``slots=True``).

:func:`slotted` rebuilds a dataclass with one slot per field and no ``__dict__``, as
``dataclass(slots=True)`` does on 3.10+: smaller instances, faster attribute reads, and a typo'd
attribute cannot be set. One code path on every version, so what the tests see on one interpreter
is what runs on the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def _getstate(self) -> list:
    return [getattr(self, f.name) for f in dataclasses.fields(self)]


def _setstate(self, state: list) -> None:
    # a frozen class refuses setattr; copy/pickle restore through object.__setattr__
    for f, value in zip(dataclasses.fields(self), state):
        object.__setattr__(self, f.name, value)


def slotted(cls: type[T]) -> type[T]:
    """Return a copy of dataclass ``cls`` that stores its fields in ``__slots__``."""
    if not dataclasses.is_dataclass(cls) or "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__}: slotted() takes a dataclass without __slots__")
    names = tuple(f.name for f in dataclasses.fields(cls))
    body: dict[str, Any] = dict(cls.__dict__)
    for name in names:
        body.pop(name, None)  # class-level defaults would clash with the slots; __init__ has them
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    body["__slots__"] = names
    if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        body.setdefault("__getstate__", _getstate)
        body.setdefault("__setstate__", _setstate)
    meta: Any = type(cls)  # the metaclass builds the class; mypy cannot type a metaclass call on type[T]
    new: type[T] = meta(cls.__name__, cls.__bases__, body)
    new.__qualname__ = cls.__qualname__
    return new
