"""Name -> factory registries (the timm / Ray ``registry.py`` pattern).

Every pluggable piece of lungray (models, heads, freeze policies, optimizers, schedulers,
augmentation presets, dataset adapters, Grad-CAM target layers) lives in a ``Registry``.
Unknown names raise a :class:`~lungray.errors.ConfigError` that lists the valid choices, so a
typo in a sweep YAML fails at config time rather than on a GPU an hour later.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from lungray.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from string keys to objects (usually factories).

    >>> heads = Registry("head")
    >>> @heads.register("linear")
    ... def linear(): return "L"
    >>> heads.get("linear")()
    'L'
    >>> heads.get("linaer")
    Traceback (most recent call last):
    ...
    lungray.errors.ConfigError: unknown head 'linaer'; valid choices: linear; did you mean 'linear'?
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, doc: str = "") -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = o
            self._docs[name] = doc or (getattr(o, "__doc__", "") or "").strip().split("\n")[0]
            return o

        if obj is not None:
            return _add(obj)
        return _add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = suggest(name, self.names())
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'; valid choices: {', '.join(self.names())}{hint}"

    def check(self, name: str) -> str:
        """Raise the standard error if ``name`` is not registered; return it otherwise."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._items)

    def doc(self, name: str) -> str:
        self.get(name)
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def suggest(name: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The closest ``candidates`` to a mistyped ``name`` (difflib ratio, case-insensitive), best first.

    A candidate that ends with ``:name`` (a namespaced spelling of the same name, e.g.
    ``tv:alexnet`` for ``alexnet``) comes first whatever its ratio.

    >>> suggest("alexnet", ["haloregnetz_b", "tv:alexnet", "resnet50"])
    ['tv:alexnet', 'haloregnetz_b']
    >>> suggest("densnet121", ["densenet121", "densenet161", "resnet50"])
    ['densenet121', 'densenet161']
    """
    import difflib

    cands = list(dict.fromkeys(candidates))
    low = str(name).lower()
    exact_ns = [c for c in cands if c.lower() != low and c.lower().rsplit(":", 1)[-1] == low]
    lowered = {c.lower(): c for c in cands}
    close = [lowered[c] for c in difflib.get_close_matches(low, list(lowered), n=n, cutoff=cutoff)]
    return list(dict.fromkeys(exact_ns + close))[:n]


def lazy(module: str, attr: str) -> Callable[..., Any]:
    """A factory that imports ``module.attr`` on first call (keeps registries import-cheap)."""

    def _call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    _call.__name__ = attr
    _call.__qualname__ = f"lazy({module}.{attr})"
    return _call
