"""The command-line reference, generated from the typer app: each command's help, usage, example and options.

Read from the app itself (not written by hand), so an option added, renamed or removed in `medtl/cli/`
shows here at the next `mkdocs build`. Only the attributes click's parameters have had for years are used
(`opts`, `help`, `default`, `hidden`, ...), with typer's type name where it offers one.
"""

from __future__ import annotations

import typer.main

TYPES = {"str": "text", "Path": "path", "int": "integer", "float": "number", "bool": "flag"}


def commands() -> dict[str, object]:
    """{name: click command} in the order the app declares them."""
    from medtl.cli import app

    return dict(typer.main.get_command(app).commands)


def _type(param) -> str:
    try:
        bare = param.bare_type() if callable(getattr(param, "bare_type", None)) else param.type.name
    except (AttributeError, TypeError):
        return ""
    bare = str(bare)
    if bare.startswith("list["):
        return TYPES.get(bare[5:-1], bare[5:-1]) + ", repeatable"
    return TYPES.get(bare, bare)


def _names(param) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`"
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    return ", ".join(f"`{n}`" for n in names)


def _default(param) -> str:
    default = param.default
    if param.param_type_name == "argument" or default is None or default == [] or getattr(param, "is_flag", False):
        return "on" if default is True and getattr(param, "secondary_opts", None) else ""
    return f"`{default}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _usage(name: str, cmd) -> str:
    args = []
    for p in cmd.params:
        if p.param_type_name == "argument":
            text = p.name.upper() + ("..." if p.nargs == -1 else "")
            args.append(text if p.required else f"[{text}]")
    return f"medtl {name} [OPTIONS] {' '.join(args)}".rstrip()


def _command(name: str, cmd) -> list[str]:
    rows = [f"| {_names(p)} | {_type(p)} | {_default(p)} | {_cell(p.help)} |"
            for p in cmd.params if not getattr(p, "hidden", False)]
    example = (cmd.epilog or "").removeprefix("Example:").strip()
    return [f"## medtl {name}\n", " ".join((cmd.help or "").split()) + "\n", "```text", _usage(name, cmd), "```\n",
            *(["Example:\n", "```bash", example, "```\n"] if example else []),
            "| argument / option | type | default | what |", "|---|---|---|---|", *rows, ""]


def renamed() -> list[tuple[str, str, str]]:
    """(command, old option, new option) for every deprecated spelling still accepted."""
    rows = []
    for name, cmd in commands().items():
        for param in cmd.params:
            text = getattr(param, "help", None) or ""
            if getattr(param, "hidden", False) and text.startswith("Deprecated"):
                rows.append((name, param.opts[0], text.split()[-1]))
    return rows


def render() -> str:
    """Markdown: the commands at a glance, one section per command, then the deprecated spellings."""
    cmds = commands()
    parts = ["| command | what |", "|---|---|"]
    parts += [f"| [`medtl {n}`](#medtl-{n}) | {' '.join((c.help or '').split())} |" for n, c in cmds.items()]
    parts.append("")
    for name, cmd in cmds.items():
        parts += _command(name, cmd)
    parts += ["## Renamed options\n",
              "Options that name a file the command writes are `--output` (`-o`); options that name a folder are "
              "`--output-dir` (`-o`). The old spellings below still work and log a one-line deprecation notice; "
              "they will be removed in a later release.\n",
              "| command | old | use |", "|---|---|---|"]
    parts += [f"| `medtl {c}` | `{old}` | `{new}` |" for c, old, new in renamed()]
    return "\n".join(parts) + "\n"
