"""Extension points: a registry per kind of plug-in (dataset source, model family, figure).

A plug-in lives in one module of its package and registers itself once, with a
decorator; :meth:`Registry.discover` imports every module of the package, so
adding a file is all it takes, and no list of names is repeated elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import Field

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise RuntimeError(f"two {self.kind}s are registered as {name!r}")
            self._entries[name] = entry
            return entry

        return add

    def discover(self) -> Registry[T]:
        """Import every module of the package (each registers what it defines)."""
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
        return self

    def __getitem__(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise KeyError(f"no {self.kind} {name!r}: expected one of {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.discover()._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return list(self.discover()._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self.discover()._entries.items())

    def tagged_union(self, discriminator: str) -> Any:
        """A pydantic type accepting any registered settings model, chosen by ``discriminator``."""
        models = tuple(self.discover()._entries.values())
        if len(models) == 1:
            return models[0]
        return Annotated[Union[models], Field(discriminator=discriminator)]  # noqa: UP007 - a runtime tuple of types
