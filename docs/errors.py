"""Every `error: ...` line medtl can print, read from its code, and the troubleshooting entries that explain them.

medtl reports bad input as one line, `error: <message>`, made from a `MedtlError`. This module finds every
`MedtlError(...)` in the package (by parsing the code, not by running it) and turns its message into a
template: the literal text, with each value filled in at run time (`{path}`, `{exc}`, ...) shown as `…`.
`docs/errors.yaml` holds one entry per message (or per group of messages): the templates it covers
(`match`, exactly as this module prints them), a short title, the cause and the fix. The troubleshooting
page is generated from both, and `tests/interface/test_docs.py` fails when a message has no entry or an entry
matches no message, so the page and the code cannot drift apart.

    python -m docs.errors --missing   # templates with no entry, as YAML stubs to paste into errors.yaml
    python -m docs.errors --stale     # entries whose templates no longer occur in the code
    python -m docs.errors             # every template, where it is raised, and its entry's title

(Run from the repository root.) `--missing` and `--stale` exit 1 when they find something.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medtl"
ENTRIES = Path(__file__).with_name("errors.yaml")
HOLE = "…"  # a value filled in at run time
# page sections, by the package folder a message is raised in (the layers, low to high)
SECTIONS = {"data": "Your data", "core": "Settings and config files", "models": "Backbones, weights and strategies",
            "training": "Training, resuming and torchrun", "evaluation": "Reports and comparisons",
            "deploy": "Predict, explain, export and serve", "experiments": "Studies and tuning", "": "Commands"}


@dataclass
class Message:
    """One message template and the places (`file:line`) that raise it."""

    template: str
    sites: list[str] = field(default_factory=list)

    @property
    def section(self) -> str:
        parts = Path(self.sites[0].split(":")[0]).parts
        return parts[1] if len(parts) > 2 and parts[1] in SECTIONS else ""


@dataclass
class Entry:
    """An entry of errors.yaml: the templates it covers, and what to tell the user."""

    match: list[str]
    title: str
    cause: str
    fix: str


def template_of(node: ast.expr) -> str:
    """The message an expression builds, with every run-time value as `…`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(template_of(v) if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _squash(template_of(node.left) + template_of(node.right))
    return HOLE  # a variable, a call, a conditional: known only at run time


def _squash(text: str) -> str:
    while HOLE * 2 in text:
        text = text.replace(HOLE * 2, HOLE)
    return text


def error_classes(package: Path = PACKAGE) -> set[str]:
    """`MedtlError` and every class in `package` derived from it (at any depth), by name."""
    bases = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    found = {"MedtlError"}
    while grown := {name for name, parents in bases.items() if parents & found} - found:
        found |= grown
    return found


def _raises_error(call: ast.Call, classes: set[str]) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in classes and bool(call.args)


def _templates(arg: ast.expr, scope: ast.AST, functions: dict[str, ast.FunctionDef], depth: int = 0) -> list[str]:
    """The templates an argument can carry: a variable is followed to its assignments in the enclosing
    function, a call to a function of the same module to its `return`s (e.g. a helper that picks the
    message by errno). What stays unknown (`…` alone) relays a message made elsewhere and is dropped."""
    if depth < 4 and isinstance(arg, ast.Name):
        values = [n.value for n in ast.walk(scope) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == arg.id for t in n.targets)]
        return [t for v in values for t in _templates(v, scope, functions, depth + 1)]
    if depth < 4 and isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id in functions:
        fn = functions[arg.func.id]
        returns = [r.value for r in ast.walk(fn) if isinstance(r, ast.Return) and r.value is not None]
        return [t for r in returns for t in _templates(r, fn, functions, depth + 1)]
    text = _squash(template_of(arg))
    return [] if text == HOLE else [text]


def messages(package: Path = PACKAGE) -> list[Message]:
    """Every message template of a MedtlError (or a subclass) in `package`, with the sites that raise it."""
    found: dict[str, Message] = {}
    classes = error_classes(package)
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        owner: dict[ast.AST, ast.AST] = {}
        for fn in functions.values():  # ast.walk goes outside in, so a nested function's nodes end up its own
            owner.update({n: fn for n in ast.walk(fn)})
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _raises_error(node, classes)):
                continue
            site = f"{path.relative_to(package.parent).as_posix()}:{node.lineno}"
            for text in _templates(node.args[0], owner.get(node, tree), functions):
                message = found.setdefault(text, Message(text))
                if site not in message.sites:
                    message.sites.append(site)
    return sorted(found.values(), key=lambda m: m.sites[0])


def entries(path: Path = ENTRIES) -> list[Entry]:
    """The entries of errors.yaml; `match` may be one template or a list of them."""
    raw = yaml.safe_load(path.read_text()) or []
    out = []
    for item in raw:
        match = item["match"] if isinstance(item["match"], list) else [item["match"]]
        out.append(Entry(match, item["title"], item["cause"].strip(), item["fix"].strip()))
    return out


def pair(msgs: list[Message], ents: list[Entry]) -> tuple[dict[str, Entry], list[Message], list[str]]:
    """({template: its entry}, messages without an entry, entry templates that match no message)."""
    by_template = {t: e for e in ents for t in e.match}
    present = {m.template for m in msgs}
    return ({m.template: by_template[m.template] for m in msgs if m.template in by_template},
            [m for m in msgs if m.template not in by_template],
            [t for t in by_template if t not in present])


def stub(message: Message) -> str:
    """A YAML entry to fill in for a message that has none."""
    return (f"# raised at {', '.join(message.sites)}\n- match: {json.dumps(message.template, ensure_ascii=False)}\n"
            "  title: TODO a short title\n  cause: TODO why it happens\n  fix: TODO what to do\n")


def render() -> str:
    """The generated part of the troubleshooting page: every message, grouped by where it is raised."""
    msgs = messages()
    found, missing, _ = pair(msgs, entries())
    if missing:  # the build fails on this (a warning under --strict) and so does the test; show them anyway
        found.update({m.template: Entry([m.template], "No entry yet", "(not documented yet)", "") for m in missing})
    lines: list[str] = []
    for key, section in SECTIONS.items():
        members = [m for m in msgs if m.section == key]
        seen: list[Entry] = []
        for m in members:
            if found[m.template] not in seen:
                seen.append(found[m.template])
        if seen:
            lines.append(f"## {section}\n")
            lines += [_render_entry(e, msgs) for e in seen]
    return "\n".join(lines)


def _render_entry(entry: Entry, msgs: list[Message]) -> str:
    covered = [m for m in msgs if m.template in entry.match]
    shown = "\n".join(f"error: {html.escape(m.template)}" for m in covered)
    sites = ", ".join(f"`{s}`" for m in covered for s in m.sites)
    return (f"### {entry.title}\n\n<pre class=\"medtl-error\"><code>{shown}</code></pre>\n\n"
            f"**Cause.** {entry.cause}\n\n**Fix.** {entry.fix}\n\n<small>Raised at {sites}.</small>\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m docs.errors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--missing", action="store_true", help="messages without an entry, as YAML stubs")
    ap.add_argument("--stale", action="store_true", help="entry templates that match no message")
    args = ap.parse_args(argv)
    msgs = messages()
    found, missing, stale = pair(msgs, entries())
    if args.missing or args.stale:
        for m in missing if args.missing else []:
            print(stub(m))
        for t in stale if args.stale else []:
            print(f"stale entry template: {t!r}")
        problems = (missing if args.missing else []) + (stale if args.stale else [])
        print(f"{len(problems)} found ({len(msgs)} messages, {len(missing)} without an entry, "
              f"{len(stale)} stale templates)", file=sys.stderr)
        return 1 if problems else 0
    for m in msgs:
        title = found[m.template].title if m.template in found else "NO ENTRY"
        print(f"{m.template}\n    {', '.join(m.sites)}  [{title}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
