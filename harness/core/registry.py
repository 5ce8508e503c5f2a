"""Registry of methods: a name maps to a :class:`~harness.core.mixer.TokenMixer` class (an attention
replacement inside the suite's decoder) or an :class:`~harness.core.architecture.Architecture` class (a
whole language model, e.g. Mamba).

Adding a method is one module in a method package, with one decorator line::

    @register_mixer("my-method")
    class MyMixer(LinearAttentionMixer):
        ...

**Discovery.** Every module of every method package (:data:`METHOD_PACKAGES`, plus the packages
named in the environment variable ``DIJIANG_METHOD_PACKAGES``, comma-separated, for methods kept
outside this repository) is imported on first use, by walking the package with :mod:`pkgutil`: a new
module registers itself, with no ``__init__`` edit, and appears in the tests, benchmarks and tables.
The method packages are imported by name at run time, never by an ``import`` statement of the core.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from typing import TypeAlias, TypeVar

from harness.core.architecture import Architecture
from harness.core.mixer import FORMS, MixerConfig, MixerConfigError, TokenMixer, has_attention_map

#: a registered method: a token-mixer class or an architecture class
Method: TypeAlias = type[TokenMixer] | type[Architecture]

_REGISTRY: dict[str, Method] = {}
#: the suite's own method packages
METHOD_PACKAGES: tuple[str, ...] = ("baselines", "dijiang")
#: environment variable naming more method packages (comma-separated importable package names)
EXTRA_PACKAGES_ENV = "DIJIANG_METHOD_PACKAGES"
_LOADED: set[str] = set()

M = TypeVar("M", bound=type)


class UnknownMethodError(KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _check_declaration(name: str, cls: type) -> None:
    bad = [f for f in cls.forms if f not in FORMS]
    if bad or cls.default_form not in cls.forms:
        raise TypeError(f"{cls.__name__}: forms {cls.forms} / default {cls.default_form!r} invalid")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")


def register_mixer(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`TokenMixer` subclass under ``name``."""

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
            raise TypeError(f"@register_mixer({name!r}) must decorate a TokenMixer subclass")
        _check_declaration(name, cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def register_architecture(name: str) -> Callable[[M], M]:
    """Class decorator registering an :class:`Architecture` subclass under ``name``."""

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Architecture)):
            raise TypeError(f"@register_architecture({name!r}) must decorate an Architecture subclass")
        if getattr(cls, "__abstractmethods__", None):
            raise TypeError(f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)}")
        _check_declaration(name, cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def method_packages() -> tuple[str, ...]:
    """The packages whose modules are methods: :data:`METHOD_PACKAGES` and those named in
    ``$DIJIANG_METHOD_PACKAGES``."""
    extra = [p.strip() for p in os.environ.get(EXTRA_PACKAGES_ENV, "").split(",") if p.strip()]
    return METHOD_PACKAGES + tuple(p for p in dict.fromkeys(extra) if p not in METHOD_PACKAGES)


def _load_methods() -> None:
    """Import every module of every method package once (each registers its methods)."""
    for name in method_packages():
        if name in _LOADED:
            continue
        _LOADED.add(name)  # first: a method module that asks the registry while importing does not recurse
        try:
            package = importlib.import_module(name)
            for info in pkgutil.walk_packages(getattr(package, "__path__", []), f"{name}."):
                importlib.import_module(info.name)
        except BaseException:
            _LOADED.discard(name)
            raise


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The class registered as ``name``; a clear error lists the known names."""
    _load_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def is_architecture(name: str) -> bool:
    """Whether method ``name`` is a whole architecture (kind ``model``) rather than a token mixer."""
    return issubclass(get_method(name), Architecture)


def build_mixer(name: str, config: MixerConfig) -> TokenMixer:
    """Instantiate token mixer ``name`` for ``config`` (a whole architecture is an error: build it with
    :func:`harness.conversion.factory.build_model`)."""
    cls = get_method(name)
    if issubclass(cls, Architecture):
        raise MixerConfigError(
            f"method {name!r} is a whole architecture (kind 'model'), not a token mixer for the suite's decoder; "
            f"build its model with harness.conversion.factory.build_model(ModelSpec({name!r}, ...))."
        )
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
        "kind": cls.kind,
        "forms": list(cls.forms),
        "default_form": cls.default_form,
        "uses_rotary": cls.uses_rotary,
        "convertible": cls.convertible,
        "supports_left_padding": cls.supports_left_padding,
        "attention_map": not issubclass(cls, Architecture) and has_attention_map(cls),
        "paper": cls.paper,
    }
