"""Name -> implementation tables, so a new variant is one class and one yaml file."""

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from sweep.errors import ConfigError, choice_error

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise choice_error(self.kind, name, self._entries)
        return self._entries[name]

    def build(self, name: str, options: Mapping[str, Any], *args: Any, **fixed: Any) -> Any:
        """Call entry `name` with the code's `args`/`fixed` and the user's config `options`.

        The options are checked against the entry's signature first, so a typo
        in a yaml key names the valid keys, and a TypeError raised inside the
        entry is never mistaken for one.
        """
        entry = self.get(name)
        signature = inspect.signature(entry)
        try:
            signature.bind(*args, **fixed, **options)
        except TypeError as err:
            accepted = [p for i, p in enumerate(signature.parameters) if i >= len(args) and p not in fixed]
            raise ConfigError(f"{self.kind} {name!r}: {err}; its options are: {', '.join(accepted) or 'none'}") from None
        return entry(*args, **fixed, **options)

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
