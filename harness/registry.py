"""Registry of token-mixer methods: a name maps to a :class:`~harness.mixer.TokenMixer` class.

Adding a method is one module plus one decorator line::

    @register_mixer("my-method")
    class MyMixer(TokenMixer):
        forms = ("parallel", "chunk", "recurrent")
        ...

The method packages (``baselines``, ``dijiang``) are imported on first use, so every registered
method appears in the tests, benchmarks and tables without touching the harness.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from harness.mixer import FORMS, MixerConfig, MixerConfigError, TokenMixer

_REGISTRY: dict[str, type[TokenMixer]] = {}
METHOD_PACKAGES: tuple[str, ...] = ("baselines", "dijiang")

M = TypeVar("M", bound=type[TokenMixer])


class UnknownMethodError(KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_mixer(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`TokenMixer` subclass under ``name``."""

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
            raise TypeError(f"@register_mixer({name!r}) must decorate a TokenMixer subclass")
        bad = [f for f in cls.forms if f not in FORMS]
        if bad or cls.default_form not in cls.forms:
            raise TypeError(f"{cls.__name__}: forms {cls.forms} / default {cls.default_form!r} invalid")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_methods() -> None:
    for pkg in METHOD_PACKAGES:
        importlib.import_module(pkg)


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[TokenMixer]:
    """The mixer class registered as ``name``; a clear error lists the known names."""
    _load_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def build_mixer(name: str, config: MixerConfig) -> TokenMixer:
    """Instantiate method ``name`` for ``config``."""
    cls = get_method(name)
    try:
        return cls(config)
    except MixerConfigError:
        raise
    except (TypeError, ValueError) as err:  # e.g. an option of the wrong type
        raise MixerConfigError(f"cannot build method {name!r}: {err}") from err


def capabilities(name: str) -> dict[str, object]:
    """The declared capabilities of method ``name`` as a plain dict (for tables and docs)."""
    cls = get_method(name)
    return {
        "method": name,
        "kind": getattr(cls, "kind", "mixer"),
        "forms": list(cls.forms),
        "default_form": cls.default_form,
        "uses_rotary": cls.uses_rotary,
        "convertible": cls.convertible,
        "paper": cls.paper,
    }
