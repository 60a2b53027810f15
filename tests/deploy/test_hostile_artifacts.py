"""Hostile artifacts: checkpoints and weights files from elsewhere (a list, bare weights, a pickle that would run
code), a damaged study.yaml, same-named images for explain, and serve on a non-loopback address. One line or
success, never a traceback; nothing in a hostile file runs; nothing overwritten."""

from __future__ import annotations

import logging
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch

import medtl
from helpers import cli_in_process
from medtl.core.errors import MedtlError


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `medtl ARGS` run in this process."""
    return cli_in_process(monkeypatch, capsys, *args)


class _OpensAFile:
    """Unpickling this calls open(marker, 'w'): the marker file exists afterwards iff the pickle was run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# D5 -------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_explain_writes_one_overlay_per_same_named_file(tiny_trained, tmp_path, monkeypatch, capsys):
    run_dir, data = tiny_trained
    inputs = tmp_path / "series"
    for patient, source in (("patient1", data / "test" / "pos" / "pos_0.png"),
                            ("patient2", data / "test" / "neg" / "neg_0.png")):
        (inputs / patient).mkdir(parents=True)
        shutil.copy(source, inputs / patient / "image.png")
    first, second = inputs / "patient1" / "image.png", inputs / "patient2" / "image.png"
    code, out, err = _cli(monkeypatch, capsys, "explain", run_dir, first, second, first, "-o", tmp_path / "cams")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert len(written) == 2 and written[0].startswith("patient1__image.png_") \
        and written[1].startswith("patient2__image.png_"), written
    assert out.strip() == f"2 overlays -> {tmp_path / 'cams'}"  # the file given twice is explained once
    one, two = [(tmp_path / "cams" / n).read_bytes() for n in written]
    assert one != two  # each overlay is its own image's, none written over the other
    folder_written, failed = medtl.Run.load(run_dir).explain(inputs, out=tmp_path / "from_folder")
    assert not failed and sorted(p.name for p in folder_written) == written
    assert sorted(p.name for p in (tmp_path / "from_folder").iterdir()) == written


def test_overlay_names_are_distinct_whatever_the_names():
    from medtl.deploy.explain import overlay_names

    paths = [Path("/d/p1/1.dcm"), Path("/d/p2/1.dcm"), Path("/d/x/SCAN.png"), Path("/d/y/scan.png"),
             Path("/d/a.png"), Path("/d/q/a_b.png"), Path("/d/q_a/b.png"), Path("/d/q/b.png"),
             Path("/d/q/b.jpeg"), Path("/d/" + "x" * 300 + ".png")]
    names = overlay_names(paths)
    assert names[:6] == ["p1__1.dcm", "p2__1.dcm", "x__SCAN.png", "y__scan.png", "a", "a_b"]
    assert len({n.lower() for n in names}) == len(paths)  # distinct even where case does not count
    assert all(len(n.encode()) <= 160 for n in names) and names[-1].startswith("x" * 150 + "-")
    assert overlay_names(paths) == names  # the same inputs always get the same names


# D19 ------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("content, problem", [
    ([1, 2, 3], "a list of 3 items"),
    ({"model": [1]}, "a mapping with keys model; no config, classes, threshold"),
    ("classes", "classes is a str"),
])
def test_a_checkpoint_that_is_not_medtls_is_one_line(tiny_trained, tmp_path, monkeypatch, capsys, content,
                                                     problem):
    run_dir = shutil.copytree(tiny_trained[0], tmp_path / "run")
    checkpoint = run_dir / "checkpoint.pt"
    if content == "classes":  # medtl's own record with one field of the wrong type
        record = torch.load(checkpoint, weights_only=True)
        content = {**record, "classes": "neg,pos"}
    torch.save(content, checkpoint)
    code, out, err = _cli(monkeypatch, capsys, "predict", run_dir, tiny_trained[1] / "test", "-o", tmp_path / "p.csv")
    assert code == 2
    assert err.startswith(f"error: checkpoint {checkpoint} is not a medtl checkpoint ({problem}")
    assert err.endswith("); pass a run folder written by `medtl train`, or train the run again\n")
    assert len(err.splitlines()) == 1 and not (tmp_path / "p.csv").exists()
    with pytest.raises(MedtlError, match="is not a medtl checkpoint"):
        medtl.Run.load(run_dir).predict(tiny_trained[1] / "test")


@pytest.mark.slow
def test_a_checkpoint_of_bare_weights_names_the_way_to_use_them(tiny_trained, tmp_path, monkeypatch, capsys):
    run_dir = shutil.copytree(tiny_trained[0], tmp_path / "run")
    checkpoint = run_dir / "checkpoint.pt"
    torch.save(torch.load(checkpoint, weights_only=True)["model"], checkpoint)  # the state dict alone
    code, _, err = _cli(monkeypatch, capsys, "predict", run_dir, tiny_trained[1] / "test", "-o", tmp_path / "p.csv")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: checkpoint {checkpoint} is not a medtl checkpoint (a state dict of ")
    assert err.endswith(f"bare weights, not a run); pass a run folder written by `medtl train`, or train one from "
                        f"them: medtl train DATA --weights {checkpoint}\n")


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(tiny_trained, tmp_path, monkeypatch, capsys, writer):
    run_dir = shutil.copytree(tiny_trained[0], tmp_path / "run")
    marker = tmp_path / "ran"
    with open(run_dir / "checkpoint.pt", "wb") as fh:
        (torch.save if writer == "torch.save" else pickle.dump)({"model": _OpensAFile(marker)}, fh)
    code, _, err = _cli(monkeypatch, capsys, "predict", run_dir, tiny_trained[1] / "test", "-o", tmp_path / "p.csv")
    assert code == 2 and len(err.splitlines()) == 1, err  # no torch warning, no traceback
    assert err.startswith(f"error: checkpoint {run_dir / 'checkpoint.pt'} holds more than tensors and plain values (")
    assert "); it will not be unpickled, since that could run code: " in err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("content, problem", [
    ([torch.zeros(2)], "is not a state dict of tensors (a list of 1 item)"),
    ({"epochs": 3, "lr": 0.1}, "is not a state dict of tensors (a mapping with keys epochs, lr)"),
    ("code", "holds more than tensors and plain values ("),
])
def test_a_weights_file_that_is_no_state_dict_is_one_line_before_the_run(image_tree, tmp_path, monkeypatch, capsys,
                                                                           content, problem):
    weights, marker = tmp_path / "weights.pth", tmp_path / "ran"
    with open(weights, "wb") as fh:
        pickle.dump(_OpensAFile(marker), fh) if content == "code" else torch.save(content, fh)
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    code, _, err = _cli(monkeypatch, capsys, "train", image_tree, "--backbone", "resnet18", "--strategy", "full",
                        "--weights", weights, "--epochs", "1", "--image-size", "32", "--output-dir",
                        tmp_path / "runs", "--quiet")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: weights file {weights} {problem}")
    assert not marker.exists() and not (tmp_path / "runs").exists()  # nothing ran, no run folder was made


# D20 ------------------------------------------------------------------------------------------------------------

STUDY = """name: tiny
out: {out}
base: {{data: {{path: {data}, image_size: 32}}, train: {{epochs: 1}}}}
grid: {{backbone: [resnet18], strategy: [scratch], seed: [0, 1]}}
"""


@pytest.mark.parametrize("damage, message", [
    ("grid: [1, 2\n", "not valid YAML at line 2, column 1"),
    ("- a list\n", "the top level is a list"),
    ("name: tiny\ngrid: 5\n", "grid must be a mapping, not a int ('5')"),
    ("name: tiny\ngrid: {bogus_setting: [1]}\n", "grid: unknown setting 'bogus_setting'"),
    ("name: tiny\nskipped: 3\ngrid: {seed: [0]}\n", "skipped must be a list of lines"),
    (b"\xff\xfe name", "is not a UTF-8 text file"),
])
def test_report_on_a_damaged_study_yaml_is_one_line(tmp_path, monkeypatch, capsys, damage, message):
    from medtl.experiments.study.grid import load_study, load_written, write_spec

    (tmp_path / "data").mkdir()
    config = tmp_path / "tiny.yaml"
    config.write_text(STUDY.format(out=tmp_path / "studies", data=tmp_path / "data"))
    folder = write_spec(load_study(config))  # study.yaml as `medtl study` writes it, before any run
    assert [n for n, _ in load_written(folder.path).runs()] == ["resnet18-scratch-s0", "resnet18-scratch-s1"]
    code, _, err = _cli(monkeypatch, capsys, "report", folder.path)
    assert (code, err) == (2, f"error: {folder.path} has no finished runs to report; run `medtl study CONFIG` "
                              "first\n")  # the written file passes the study loader's checks
    (folder.spec.write_bytes if isinstance(damage, bytes) else folder.spec.write_text)(damage)
    code, _, err = _cli(monkeypatch, capsys, "report", folder.path)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {folder.spec}") and message in err
    assert sorted(p.name for p in folder.path.iterdir()) == ["study.yaml"]  # no report, no figures


# D21 ------------------------------------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket() as sock:  # bound and closed: no traffic is sent anywhere
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_serve_on_every_interface_warns_that_the_page_has_no_login(caplog):
    from medtl.deploy.serve import check_address

    port = _free_port("0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="medtl"):
        check_address("127.0.0.1", port)
        check_address("localhost", port)
        assert not caplog.records  # loopback: this machine only, nothing to warn about
        check_address("0.0.0.0", port)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    message = caplog.records[0].getMessage()
    assert message.startswith(f"--host 0.0.0.0: the page and its API have no login and are reachable from the "
                              f"network (every interface, port {port})") and "127.0.0.1" in message


@pytest.mark.slow
def test_serve_command_announces_the_warning_before_serving(tiny_trained, monkeypatch, capsys, caplog):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))  # never listens
    port = _free_port("0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="medtl"):
        code, out, err = _cli(monkeypatch, capsys, "serve", tiny_trained[0], "--host", "0.0.0.0", "--port", port,
                              "--engine", "torch")
    assert code == 0, err
    assert served == [{"host": "0.0.0.0", "port": port, "log_level": "warning"}]
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.levelno >= logging.WARNING] == \
        ["--host 0.0.0.0"]
    assert f"serving {tiny_trained[0]} on http://0.0.0.0:{port}/" in out
