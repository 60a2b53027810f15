"""The documentation is tested: the troubleshooting page covers every error message in the code, and the
examples marked runnable in docs/ run, on a tiny generated data folder, as a reader would type them.

Markers, on the line before a fenced code block:
    <!-- runnable -->          run it (bash: each line a `medtl` command; python: the block as a script)
    <!-- runnable: slow -->    run it only in the slow tier (exports, studies, searches)
    <!-- runnable: exit=2 -->  the command is expected to fail with that exit code
    <!-- file: NAME -->        write the block to NAME in the working folder before the blocks after it run
The fast test runs the commands in this process through `medtl.cli.main` (the `medtl` entry point, without
a new interpreter per command); the slow test runs every block, slow ones included, in a real shell.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import write_tree

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))  # the docs generators are the `docs` package at the repository root
from docs import errors  # noqa: E402

MARKER = re.compile(r"^<!--\s*(?P<kind>runnable|file)\s*(?::\s*(?P<arg>[^>]*?))?\s*-->\s*\n"
                    r"```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```\s*$", re.M | re.S)
SHELLS = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    kind: str  # runnable | file
    arg: str  # slow, exit=N, or the file name
    lang: str
    code: str

    @property
    def slow(self) -> bool:
        return self.kind == "runnable" and "slow" in self.arg.split()

    @property
    def exit_code(self) -> int:
        found = re.search(r"exit=(\d+)", self.arg)
        return int(found.group(1)) if found else 0

    def commands(self) -> list[list[str]]:
        """Each command line of a shell block as argv (continuation lines joined, comments dropped)."""
        text = self.code.replace("\\\n", " ")
        return [argv for line in text.splitlines() if (argv := shlex.split(line, comments=True))]


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page.relative_to(DOCS).as_posix(), text[:m.start()].count("\n") + 1, m["kind"], m["arg"] or "",
                  m["lang"], m["code"]) for m in MARKER.finditer(text)]


PAGES = sorted(p for p in DOCS.rglob("*.md") if any(b.kind == "runnable" for b in blocks(p)))


# --- the troubleshooting page and the code agree -----------------------------------------------------------

def test_every_error_message_has_a_troubleshooting_entry():
    _, missing, _ = errors.pair(errors.messages(), errors.entries())
    assert not missing, ("MedtlError messages without an entry in docs/errors.yaml (`python -m docs.errors "
                         "--missing` prints stubs to fill in):\n" +
                         "\n".join(f"  {m.template}  [{', '.join(m.sites)}]" for m in missing))


def test_every_troubleshooting_entry_matches_a_message():
    _, _, stale = errors.pair(errors.messages(), errors.entries())
    assert not stale, "entries in docs/errors.yaml whose message is no longer in the code:\n" + "\n".join(stale)


def test_the_page_shows_every_message_with_cause_and_fix():
    page = errors.render()
    for m in errors.messages():
        assert errors.html.escape(m.template) in page
    for e in errors.entries():
        assert e.title and e.cause and e.fix and "TODO" not in e.title + e.cause + e.fix, e.match


def test_the_extractor_sees_every_way_a_message_is_built(tmp_path):
    """The check can fail: a new message (an f-string, a helper's returns, a variable) is found and reported."""
    pkg = tmp_path / "medtl"
    pkg.mkdir()
    (pkg / "mod.py").write_text(
        "from medtl.core.errors import MedtlError\n"
        "def f(path, n):\n"
        "    raise MedtlError(f'{path} has {n} rows; ' 'give at least two')\n"
        "def g(code):\n"
        "    message = 'plain ' + str(code) + ' text'\n"
        "    raise MedtlError(message)\n"
        "def h(code):\n"
        "    raise MedtlError(_pick(code))\n"
        "def _pick(code):\n"
        "    if code:\n"
        "        return f'first {code}'\n"
        "    return 'second'\n"
        "def relay(text):\n"
        "    raise MedtlError(text)  # made elsewhere: nothing new to document\n"
        "class Stopped(MedtlError):\n"
        "    exit_code = 130\n"
        "class Killed(Stopped):\n"
        "    pass\n"
        "def k(run):\n"
        "    raise Killed(f'killed: resume {run}')\n")
    found = {m.template: m.sites for m in errors.messages(pkg)}
    assert found == {"… has … rows; give at least two": ["medtl/mod.py:3"], "plain … text": ["medtl/mod.py:6"],
                     "first …": ["medtl/mod.py:8"], "second": ["medtl/mod.py:8"],
                     "killed: resume …": ["medtl/mod.py:20"]}
    entry = errors.Entry(["second"], "t", "c", "f")
    _, missing, stale = errors.pair(errors.messages(pkg), [entry, errors.Entry(["gone"], "t", "c", "f")])
    assert {m.template for m in missing} == set(found) - {"second"} and stale == ["gone"]


def test_missing_command_prints_stubs_and_fails(capsys, monkeypatch):
    monkeypatch.setattr(errors, "entries", lambda path=errors.ENTRIES: [])
    assert errors.main(["--missing"]) == 1
    assert '- match: "' in capsys.readouterr().out


# --- the runnable examples ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """What the examples assume: `data/` with train/ and test/, classes normal and pneumonia."""
    root = tmp_path_factory.mktemp("docs") / "work"
    write_tree(root / "data", classes=("normal", "pneumonia"))
    return root


@pytest.fixture
def work(workspace, tmp_path, monkeypatch, tmp_path_factory) -> Path:
    """A fresh copy of the workspace as the current folder, and one shared cache for all pages (speed)."""
    here = tmp_path / "work"
    shutil.copytree(workspace, here)
    monkeypatch.chdir(here)
    monkeypatch.setenv("MEDTL_CACHE", str(workspace.parent / "cache"))
    return here


def _run_in_process(argv: list[str], monkeypatch) -> int:
    from medtl import cli

    monkeypatch.setattr(sys, "argv", argv)
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_runnable_examples(page, work, monkeypatch):
    for block in blocks(page):
        where = f"{block.page}:{block.line}"
        if block.kind == "file":
            (work / block.arg).write_text(block.code)
        elif block.slow:
            continue
        elif block.lang in SHELLS:
            for argv in block.commands():
                assert argv[0] == "medtl", f"{where}: runnable shell blocks hold medtl commands only: {argv}"
                assert _run_in_process(argv, monkeypatch) == block.exit_code, f"{where}: {shlex.join(argv)}"
        elif block.lang == "python":
            exec(compile(block.code, where, "exec"), {"__name__": "__docs__"})  # a fresh namespace: blocks stand alone
        else:
            pytest.fail(f"{where}: cannot run a '{block.lang}' block")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_runnable_examples_in_a_shell(page, work):
    """Every runnable block, the slow ones too, as separate processes: the `medtl` command a reader types."""
    env = {**os.environ, "MEDTL_CACHE": os.environ["MEDTL_CACHE"]}
    for block in blocks(page):
        if block.kind == "file":
            (work / block.arg).write_text(block.code)
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", block.code] if block.lang in SHELLS else [sys.executable, "-c", block.code]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == block.exit_code, f"{block.page}:{block.line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_marker_parser_finds_the_examples():
    found = {p.relative_to(DOCS).as_posix(): blocks(p) for p in PAGES}
    assert {"quickstart.md", "howto/data.md", "howto/deploy.md", "howto/studies.md"} <= set(found)
    quick = [b for b in found["quickstart.md"] if b.lang == "bash"]
    assert quick[0].commands() == [["medtl", "--version"]]
    assert all(b.lang in SHELLS | {"python", "yaml"} for bs in found.values() for b in bs)


def test_the_cli_reference_lists_every_command_and_option():
    from docs import cli_ref

    page, renamed = cli_ref.render(), {(c, old) for c, old, _ in cli_ref.renamed()}
    for name, cmd in cli_ref.commands().items():
        assert f"## medtl {name}\n" in page
        for param in cmd.params:
            if getattr(param, "hidden", False):  # a deprecated spelling: listed under Renamed options
                assert (name, param.opts[0]) in renamed
            else:
                assert (f"`{param.opts[0]}`" if param.param_type_name == "option" else f"`{param.name.upper()}`") in page
    assert ("train", "--out") in renamed
