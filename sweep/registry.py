"""Name -> implementation tables, so a new variant is one class and one yaml file."""

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ConfigDict, PydanticUserError, TypeAdapter, ValidationError

from sweep.errors import ConfigError, choice_error
from sweep.schema import explain

T = TypeVar("T")


@dataclass(frozen=True)
class ImportPath:
    """An entry not imported yet: `package.module:attribute`."""

    target: str

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | ImportPath] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            self._add(name, entry)
            return entry

        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register `package.module:attribute`, imported on first use, so a heavy library (torchvision)
        loads only when its entry is chosen, not whenever the registry's module is imported."""
        self._add(name, ImportPath(target))

    def _add(self, name: str, entry: T | ImportPath) -> None:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise choice_error(self.kind, name, self._entries)
        entry = self._entries[name]
        if isinstance(entry, ImportPath):
            entry = self._entries[name] = entry.load()
        return entry

    def build(self, name: str, options: Mapping[str, Any], *args: Any, **fixed: Any) -> Any:
        """Call entry `name` with the code's `args`/`fixed` and the user's config `options`.

        The options are checked against the entry's signature first, names and
        (strictly, as `sweep.schema` checks the rest of the config) annotated
        types, so a typo in a yaml key names the valid keys, `model.width=abc`
        is one line, and a TypeError raised inside the entry is never mistaken for one.
        """
        entry = self.get(name)
        signature = _signature(entry)
        try:
            signature.bind(*args, **fixed, **options)
        except TypeError as err:
            accepted = [p for i, p in enumerate(signature.parameters) if i >= len(args) and p not in fixed]
            raise ConfigError(f"{self.kind} {name!r}: {err}; its options are: {', '.join(accepted) or 'none'}") from None
        for key, value in options.items():
            parameter = signature.parameters.get(key)
            if parameter is not None and parameter.annotation is not inspect.Parameter.empty:
                self._check_type(name, key, parameter.annotation, value)
        return entry(*args, **fixed, **options)

    def _check_type(self, name: str, key: str, annotation: Any, value: Any) -> None:
        try:
            adapter = TypeAdapter(annotation, config=ConfigDict(strict=True, arbitrary_types_allowed=True))
        except PydanticUserError:  # an annotation pydantic cannot check (a forward reference): the entry checks it
            return
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            raise ConfigError(f"{self.kind} {name!r}: {explain(err, {key: value}, at=(key,))}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _signature(entry: Any) -> inspect.Signature:
    """The entry's signature with string annotations (`from __future__ import annotations`) resolved where possible."""
    try:
        return inspect.signature(entry, eval_str=True)
    except (NameError, TypeError):
        return inspect.signature(entry)
