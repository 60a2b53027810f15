"""Issue 35: every public name of the Python API (what docs/reference/api.md shows) has a Google-style
docstring: a summary, `Args:` naming each parameter it takes, and `Returns:` when it returns something."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "api.md"


def shown(members: bool | None = None) -> list[str]:
    """The dotted names the API page renders (`::: medtl.api.train`); with `members` False, those shown without
    their members (`members: false`), True the others."""
    blocks = re.findall(r"^::: ([\w.]+)((?:\n    .*)*)", API_PAGE.read_text(), flags=re.M)
    return [name for name, options in blocks if members is None or members != ("members: false" in options)]


def resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def callables(obj) -> list[tuple[str, object]]:
    """`obj` itself when a function; a class's public methods (not its properties) otherwise."""
    if not inspect.isclass(obj):
        return [(obj.__name__, obj)]
    found = [(f"{obj.__name__}.{n}", m) for n, m in vars(obj).items()
             if not n.startswith("_") and (inspect.isfunction(m) or isinstance(m, (classmethod, staticmethod)))]
    return [(n, getattr(m, "__func__", m)) for n, m in found]


def problems(name: str, fn) -> list[str]:
    doc = inspect.getdoc(fn) or ""
    if not doc.strip():
        return [f"{name}: no docstring"]
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")]
    found = []
    if params and "Args:" not in doc:
        found.append(f"{name}: no Args: section")
    for p in params:
        label = f"**{p.name}" if p.kind is p.VAR_KEYWORD else f"*{p.name}" if p.kind is p.VAR_POSITIONAL else p.name
        if "Args:" in doc and not re.search(rf"^\s+{re.escape(label)}:", doc, flags=re.M):
            found.append(f"{name}: {label} not in Args:")
    returns = inspect.signature(fn).return_annotation  # (a summary says what a call without arguments gives)
    if params and returns not in (None, "None", inspect.Signature.empty) and "Returns:" not in doc:
        found.append(f"{name}: no Returns: section")
    return found


def test_the_api_page_shows_names_that_exist():
    names = shown()
    assert "medtl.api.train" in names and "medtl.api.Run" in names
    for dotted in names:
        resolve(dotted)


@pytest.mark.parametrize("dotted", shown(members=True))
def test_every_public_name_has_a_google_docstring(dotted):
    """Functions and the public methods of classes (properties and a class shown without its members need a
    docstring only)."""
    obj = resolve(dotted)
    assert inspect.getdoc(obj), f"{dotted}: no docstring"
    bad = [line for name, fn in callables(obj) for line in problems(name, fn)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_bare_docstring():
    def bare(a: int, **options) -> int:
        """Adds."""
    def partial(a: int, b: int) -> int:
        """Adds.

        Args:
            a: One.
        """
    assert problems("bare", bare) == ["bare: no Args: section", "bare: no Returns: section"]
    assert problems("partial", partial) == ["partial: b not in Args:", "partial: no Returns: section"]
