"""Labelled data from anywhere, found as a saved run needs it: the split training would find (any layout; a
plain class-folder tree whole), and the data's class names mapped onto the run's (`--classes NEW=OLD,...`)."""

from __future__ import annotations

from medtl.core.config import from_dict, to_dict
from medtl.core.errors import MedtlError
from medtl.data.sources import discover
from medtl.data.splits import DataSplits
from medtl.models.checkpoint import Checkpoint


def parse_class_map(text: str | dict[str, str] | None) -> dict[str, str]:
    """`--classes NEW=OLD,...` as {NEW: OLD}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    out = {}
    for item in str(text).split(","):
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise MedtlError(f"--classes {text!r}: {item.strip()!r} is not NEW=OLD; give the data's class and the "
                             "run's class it means, comma-separated, e.g. --classes 0=NORMAL,1=PNEUMONIA")
        out[new.strip()] = old.strip()
    return out


def map_classes(data: str, found: list[str], run_classes: list[str], given: dict[str, str]) -> dict[str, str]:
    """{data class: run class} for every class of the data: as named by `given`, else by its own name."""
    alias = {c.removeprefix("class_"): c for c in found if c.startswith("class_")}  # MedMNIST labels 0, 1, ...
    given = {alias.get(k, k): v for k, v in given.items()}
    for new, old in given.items():
        if new not in found:
            raise MedtlError(f"--classes {new}={old}: {data} has no class '{new}' (its classes: {', '.join(found)}); "
                             "name a class of the data on the left of '='")
        if old not in run_classes:
            raise MedtlError(f"--classes {new}={old}: the run has no class '{old}' (its classes: "
                             f"{', '.join(run_classes)}); name one of the run's classes on the right of '='")
    mapping = {c: given.get(c, c) for c in found}
    unknown = sorted(c for c, r in mapping.items() if r not in run_classes)
    if unknown:
        raise MedtlError(f"{data} has classes {unknown} that the model was not trained on ({run_classes}); pass "
                         "data whose class folders are among the run's classes, or map them onto the run's with "
                         "--classes NEW=OLD")
    return mapping


def find_split(ckpt: Checkpoint, data: str, split: str, reveal_ids: bool | None = None) -> DataSplits:
    """The data's splits as training would find them (class-folder trees: every image in `split`); patient keys
    in clear only with `reveal_ids` (None: as the run was trained)."""
    cfg = ckpt.config
    reveal = cfg.data.reveal_ids if reveal_ids is None else reveal_ids
    data_cfg = from_dict(type(cfg.data), {**to_dict(cfg.data), "path": data, "image_size": ckpt.preprocess.size,
                                          "fast_jpeg": ckpt.preprocess.decoding.fast_jpeg, "subset_per_class": None,
                                          "group": "none", "reveal_ids": reveal})
    splits = discover(data_cfg, cfg.data.split_seed, whole_tree_as=split)
    if split not in splits.refs:
        raise MedtlError(f"{data} has no '{split}' split; available: {', '.join(splits.refs)}")
    return splits
