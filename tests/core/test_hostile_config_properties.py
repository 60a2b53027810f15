"""Property tests: whatever a config file holds (aliases, anchors, tags, deep nesting, huge numbers, wrong types,
bytes that are not UTF-8) and whatever `--set` is given, medtl answers with one MedtlError line or a RunConfig;
no other exception escapes."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtl.core.config import SECTIONS, RunConfig, apply_overrides, load_config, parse_set
from medtl.core.errors import MedtlError

FIELDS = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]

# pieces of YAML a hostile or careless file is made of
FRAGMENTS = ["&a ", "*a", "&b [*a, *a, *a]", "<<: *a", "!!python/object:os.system ", "!!python/name:os.system",
             "!!python/object/apply:subprocess.call [[ls]]", "!custom ", "!<tag:x> ", "!!bool ", "!!int ",
             "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!str ", "! ", "%TAG ! tag:x,2000:\n---\n",
             "[", "]", "{", "}", ": ", ":", "- ", "? ", ", ", "\n", "  ", "\t", "'", '"', "#", "|\n", ">\n",
             "---\n", "...\n", "%YAML 1.1\n", "\x00", "\ufeff", "\x85", "\u2028", "é", "null", "~", "yes", "off",
             "9" * 5000, "0x" + "f" * 3000, "1e400", "-.inf", ".nan", "2024-13-45", "2024-02-30 25:61:61",
             "0b102", "0o9", "1_000", "1:60:70", "data:", "model:", "train:", "path:", "class_names:",
             "backbone:", "epochs:", "threshold:", "recompute:", "name:", "out:", "lr:"] + [f"{f}:" for f in FIELDS]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                    st.sampled_from(["1e400", "nan", "[a, b]", "[a, b", "auto", "on", "2024-13-45"]),
                    st.integers(min_value=0, max_value=6).map(lambda n: 10 ** (10 ** n)))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=20)
# mappings shaped like a config: right and wrong keys, right and wrong types
configs = st.dictionaries(
    st.one_of(st.sampled_from([*SECTIONS, "out", "name"]), st.text(max_size=6)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), trees, max_size=5), trees),
    max_size=4)


def _dumped(tree) -> str:
    try:
        return yaml.safe_dump(tree, allow_unicode=True)
    except ValueError:  # an int past Python's str() digit limit cannot even be written
        return "x: 1\n"


def _laughs(width: int, depth: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=25).map("".join),
    configs.map(_dumped),
    st.tuples(configs.map(_dumped), st.sampled_from(FRAGMENTS), st.integers(0, 400)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]),
    st.tuples(st.integers(2, 12), st.integers(1, 12)).map(lambda t: _laughs(*t)),
    st.integers(1, 3000).map(lambda n: "a: " + "[" * n + "]" * n + "\n"),
    st.integers(1, 200).map(lambda n: "".join(f"{'  ' * i}k{i}:\n" for i in range(n)) + "  " * n + "v\n"),
    st.integers(1, 20000).map(lambda n: "data: {class_names: [" + ", ".join(["x"] * n) + "]}\n"),
)
contents = st.one_of(
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    texts.map(lambda t: t.encode("utf-16")),
    texts.map(lambda t: t.encode("latin-1", "replace")),
    st.binary(max_size=512),
    st.tuples(texts, st.binary(min_size=1, max_size=8), st.integers(0, 200)).map(
        lambda t: t[0].encode("utf-8", "surrogatepass")[:t[2]] + t[1] + t[0].encode("utf-8", "surrogatepass")[t[2]:]),
)


def _one_line_or_config(read) -> RunConfig | None:
    try:
        cfg = read()
    except MedtlError as exc:
        assert str(exc) and "\n" not in str(exc) and "\r" not in str(exc), str(exc)
        return None
    assert isinstance(cfg, RunConfig)
    return cfg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(contents)
def test_any_config_file_is_read_or_refused_in_one_line(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        cfg = _one_line_or_config(lambda: load_config(path))
    if cfg is not None:  # what is accepted is plain: text where text is expected, every name a plain string
        assert isinstance(cfg.data.path, str) and isinstance(cfg.model.backbone, str)
        assert all(type(n) is str for n in cfg.data.class_names)
        assert cfg.name is None or type(cfg.name) is str


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from([f"data.{f}" for f in ("class_names", "path", "dicom_window")]
                                                    + ["eval.threshold", "model.backbone", "name"]),
                                    st.text(max_size=10)),
                          st.one_of(st.lists(st.sampled_from(FRAGMENTS[:60]), max_size=8).map("".join),
                                    st.text(max_size=20))).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3))
def test_any_set_option_is_read_or_refused_in_one_line(items):
    cfg = _one_line_or_config(lambda: apply_overrides(RunConfig(), parse_set(items)))
    if cfg is not None:
        assert all(type(n) is str for n in cfg.data.class_names)
