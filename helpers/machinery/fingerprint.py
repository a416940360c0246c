"""A fingerprint of the code that made a run's rows: it changes when the code changes, not when
a cell moves or a comment changes (``inspect.getsource`` fails in notebooks, so: bytecode)."""
from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Callable


def fingerprint(*code: Callable) -> str:
    """A digest of the bytecode of these functions and classes (and their bases in the same module)."""
    digest = hashlib.sha256()
    for thing in code:
        if not inspect.isclass(thing):
            digest.update(_code_bytes(thing.__code__))
            continue
        for cls in inspect.getmro(thing):  # the class itself first
            if cls.__module__ != thing.__module__:
                continue
            digest.update(cls.__qualname__.encode())
            for name, member in sorted(vars(cls).items()):
                function = getattr(member, "__func__", member)  # staticmethod and classmethod too
                if inspect.isfunction(function):
                    digest.update(name.encode() + _code_bytes(function.__code__))
    return digest.hexdigest()[:16]


def _code_bytes(code: types.CodeType) -> bytes:
    """The instructions, names and constants of ``code``, nested functions included; no line numbers."""
    parts = [code.co_code, repr((code.co_names, code.co_varnames)).encode(), code.co_exceptiontable]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            parts.append(_code_bytes(const))
        elif isinstance(const, frozenset):  # no fixed order: sort it
            parts.append(repr(sorted(map(repr, const))).encode())
        else:
            parts.append(repr(const).encode())
    return b"|".join(parts)
