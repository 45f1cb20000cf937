"""Package exports loaded on first use (PEP 562), so importing a package stays cheap; and
the constructor signatures of layer classes that pass shared arguments on to a base."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``modules`` maps a module to the names it
    exports; each name is imported from its module on first access, then kept in the
    package's namespace."""
    exports = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the module-level hook
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__


class ConstructorSignature:
    """``inspect.signature(Cls)`` for a class whose ``__init__`` is ``(*args, family
    keywords, **kwargs)`` over a base that spells out the shared arguments: the base's
    named parameters followed by the family's keywords. Instances raise ``AttributeError``,
    so ``inspect.signature(instance)`` stays the call's (a module's ``forward``)."""

    def __init__(self, base_init: Any) -> None:
        self.base_init = base_init

    def __get__(self, obj: object, owner: type) -> Any:
        import inspect

        if obj is not None:
            raise AttributeError("__signature__")
        named = [
            p
            for p in inspect.signature(self.base_init).parameters.values()
            if p.name != "self"
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and p.name != "family_options"
        ]
        family = [
            p
            for p in inspect.signature(owner.__init__).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name != "family_options"
        ]
        shared = {p.name for p in family}
        named = [
            p.replace(kind=p.POSITIONAL_OR_KEYWORD) if p.kind == p.KEYWORD_ONLY else p
            for p in named
            if p.name not in shared
        ]
        positional = [p for p in named if p.kind != p.KEYWORD_ONLY]
        # A base's **kwargs that go on to the framework's layer (Keras' name, dtype,
        # weight options) stay; **options, the family keywords themselves, do not.
        rest = [
            p
            for p in inspect.signature(self.base_init).parameters.values()
            if p.kind == p.VAR_KEYWORD and p.name == "kwargs"
        ]
        return inspect.Signature([*positional, *family, *rest], return_annotation=None)
