"""Hostile run configs (`--config`, `--set`): one `error:` line naming the file, the place and the fix, exit 2,
nothing written; and a run folder's own config.yaml trains again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import medtl
from helpers import TINY, cli_in_process
from medtl.core.config import RunConfig, apply_overrides, load_config, parse_set
from medtl.core.errors import MedtlError


LAUGHS = "a: &a [" + ", ".join(["lol"] * 9) + "]\n" + "".join(  # 9**9 "lol"s from about 400 bytes
    f"{a}: &{a} [{', '.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi"))


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of `medtl ARGS` run in this process."""
    code, _, err = cli_in_process(monkeypatch, capsys, *args)
    return code, err


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def test_a_billion_laughs_config_is_refused_at_once_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """D3: 400 bytes of aliases ended in a MemoryError after 20 s; now one line, before anything expands."""
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 450
    start = time.perf_counter()
    with pytest.raises(MedtlError, match="alias"):
        load_config(path)
    assert time.perf_counter() - start < 2  # refused while reading, not after expanding
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", tmp_path / "data", "--config", path,
                                 "--output-dir", tmp_path / "runs"))
    assert line == (f"error: config file {path}: refused at line 2, column 8: an alias (*name) repeats an anchored "
                    "value, which can expand a small file into gigabytes; write the value out instead")
    assert not (tmp_path / "runs").exists()


def test_a_small_harmless_looking_alias_is_refused_too(tmp_path):
    """D3: an alias in a config that would train (one value reused) is refused as well: no alias is read."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: &p data, cache_dir: *p}\n")
    with pytest.raises(MedtlError, match=r"c\.yaml: refused at line 1, column 34: an alias \(\*name\)"):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("model: {backbone: [resnet18, vgg]}\n", "model.backbone: expected text, got a list ['resnet18', 'vgg']"),
    ("data: {path: {a: 1}}\n", "data.path: expected text, got a mapping {'a': 1}"),
    ("data: {path: }\n", "data.path: expected text, got a null (an empty value)"),
    ("train: {optimizer: [adam]}\n", "train.optimizer: expected text, got a list ['adam']"),
    ("train: {threshold: {youden: 1}}\n", "eval.threshold: expected text, got a mapping"),
    ("name: [a, b]\n", "name: expected text, got a list"),
    ("data: {class_names: [[a], b]}\n", "data.class_names: item ['a'] is not a name"),
    ("data: {class_names: [yes, no]}\n", "data.class_names: item True is not a name; give names (quoted"),
    ("train: {seed: 0x" + "f" * 5000 + "}\n", "train.seed: cannot read a 20000-bit number as int"),
    ("train: {epochs: " + "9" * 5000 + "}\n", "refused at line 1, column 17: cannot read '9999"),
    ("name: 2024-13-45\n", "refused at line 1, column 7: cannot read '2024-13-45' ('month must be in 1..12')"),
    ("data: {path: !!python/object/apply:os.system [echo hi]}\n", "refused at line 1, column 14: the tag"),
    ("train: {augment: !!bool x}\n", "refused at line 1, column 18: the tag 'tag:yaml.org,2002:bool'"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", "refused at line 1, column 35: the file nests values over 32 deep"),
    ("- data\n- model\n", "the top level is a list (['data', 'model']); a run config is a mapping of sections"),
])
def test_a_value_of_the_wrong_type_is_refused_with_its_key(tmp_path, text, message):
    """D3: a list or mapping where text is expected is refused with the key, never stringified."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(MedtlError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") or str(err.value).startswith(f"config file {path}")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bare_on_and_off_read_as_the_choice_they_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {recompute: on}\n")  # YAML 1.1 reads a bare on as true
    assert load_config(path).runtime.recompute == "on"


def test_a_folder_bad_yaml_and_non_utf8_are_one_line_each(tmp_path, monkeypatch, capsys):
    """D15: each names the file and the fix; YAML syntax errors give line:column and the problem."""
    run = tmp_path / "runs" / "first"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {backbone: resnet18}\n")
    data = tmp_path / "data"
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", data, "--config", run))
    assert line == f"error: config file {run} is a folder; pass the YAML file itself (e.g. {run / 'config.yaml'})"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n   lr: 1\n")
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", data, "--config", bad))
    assert line == (f"error: config file {bad}: not valid YAML at line 3, column 6: mapping values are not allowed "
                    "here; fix the syntax there (e.g. a missing colon, a tab, an unclosed bracket or quote)")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model:\n  backbone: résnet\n".encode("latin-1"))
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", data, "--config", latin))
    assert line == (f"error: config file {latin} is not a UTF-8 text file (byte 0xe9 at offset 20); save it as "
                    "UTF-8 YAML text")
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", data, "--config", "/dev/zero"))
    assert line == "error: config file /dev/zero is not a regular file (a device or a pipe); pass a YAML file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "latin.yaml", "runs"]


def test_set_reads_a_list_as_a_yaml_flow_sequence(monkeypatch, capsys, tmp_path):
    """D17: `--set "data.class_names=[a, b]"` gives ['a', 'b'], not '[a' and 'b]'; a malformed list is one line."""
    def names(value: str) -> tuple[str, ...]:
        return apply_overrides(RunConfig(), parse_set([f"data.class_names={value}"])).data.class_names

    assert names("[a, b]") == ("a", "b")
    assert names("[yes, no, 1]") == ("yes", "no", "1")  # on the command line every item is a name
    assert names("['a,b', c]") == ("a,b", "c")
    assert names("a,b") == ("a", "b")
    with pytest.raises(MedtlError, match=r"item \['a'\] is not a name"):
        names("[[a], b]")
    with pytest.raises(MedtlError, match=r"refused at line 1, column 8: an alias"):
        names("[&x a, *x]")
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", tmp_path / "data", "--set", "data.class_names=[a, b",
                                 "--output-dir", tmp_path / "runs"))
    assert line == ("error: config.data.class_names: not valid YAML at line 1, column 6: expected ',' or ']', but got "
                    "'<stream end>'; fix the syntax there (e.g. a missing colon, a tab, an unclosed bracket or quote)")
    assert not (tmp_path / "runs").exists()


def test_train_without_data_needs_a_data_path_in_the_config(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {backbone: resnet18}\n")
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", "--config", path, "--output-dir", tmp_path / "runs"))
    assert line == (f"error: missing DATA: config file {path} has no data.path; pass a data folder, manifest or .npz "
                    "as DATA, or set data.path in the config")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_run_folder_config_trains_again_without_data(image_tree, cache_dir, tmp_path, monkeypatch, capsys):
    """D16: `medtl train --config runs/X/config.yaml` takes data.path from the config; DATA given still wins."""
    first = medtl.train(image_tree, out=tmp_path / "runs", name="first", **TINY)
    config = Path(first.path) / "config.yaml"
    assert yaml.safe_load(config.read_text())["data"]["path"] == str(image_tree)
    code, err = _cli(monkeypatch, capsys, "train", "--config", config, "--name", "second", "--quiet")
    assert code == 0, err
    second = tmp_path / "runs" / "second"
    assert (second / "checkpoint.pt").is_file() and (second / "metrics.json").is_file()
    assert load_config(second / "config.yaml") == apply_overrides(load_config(config), {"name": "second"})
    line = _one_error_line(*_cli(monkeypatch, capsys, "train", tmp_path / "elsewhere", "--config", config,
                                 "--name", "third", "--quiet"))
    assert line.startswith(f"error: data path '{tmp_path / 'elsewhere'}' does not exist")  # the DATA given
    assert not (tmp_path / "runs" / "third" / "checkpoint.pt").exists()
