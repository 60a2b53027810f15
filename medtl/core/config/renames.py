"""The one table of renamed config keys, and what reads a config through it.

Before the config had sections, every training, scoring and runtime setting lived under `train` and the cache
folder under `data`. Those keys are still accepted everywhere (YAML files, `--set`, Python keyword arguments, a
run folder's config.yaml, the config stored in a checkpoint); each old key logs one deprecation line naming its
new key, once per process (an old run folder's checkpoint is read at every prediction).
"""

from __future__ import annotations

import logging
from typing import Any

from medtl.core.errors import MedtlError

log = logging.getLogger(__name__)

# old dotted key -> new dotted key; nothing else renames a key
RENAMES: dict[str, str] = {
    **{f"train.{k}": f"eval.{k}" for k in ("tta", "threshold", "bootstrap", "calibrate")},
    **{f"train.{k}": f"runtime.{k}" for k in ("device", "threads", "workers", "deterministic", "tune_malloc",
                                               "micro_batch", "recompute", "sync_bn", "engine")},
    "train.cache_frozen": "cache.cache_frozen",
    "train.feature_views": "cache.feature_views",
    "data.cache_dir": "cache.dir",
}


ANNOUNCED: set[str] = set()  # old keys already named in this process: each one line, not one per file read


def _notice(old: str, new: str, where: str) -> None:
    if old in ANNOUNCED:
        return
    ANNOUNCED.add(old)
    log.warning("%s%s is deprecated; use %s (same meaning)", f"{where}: " if where else "", old, new)


def renamed_key(key: str, where: str = "") -> str:
    """A dotted key under its current name (an old one logs one deprecation line); any other key unchanged."""
    new = RENAMES.get(key)
    if new is None:
        return key
    _notice(key, new, where)
    return new


def old_bare_names(fields: dict[str, set[str]]) -> dict[str, str]:
    """Old setting names that are no field of any section now (`cache_dir`) -> their old dotted key."""
    every = set().union(*fields.values())
    return {old.split(".")[1]: old for old in RENAMES if old.split(".")[1] not in every}


def upgrade(data: Any, where: str, fields: dict[str, set[str]]) -> Any:
    """A parsed config mapping with its old keys moved to their sections (one deprecation line per old key);
    a key of one section written under another is refused in one line naming the right section.

    Args:
        data: The mapping as read (a config.yaml, a checkpoint's config); anything else is returned as is.
        where: The file, for the messages ('' for none).
        fields: Each section's setting names (sections.section_fields).
    """
    if not isinstance(data, dict):
        return data
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in RENAMES.items():
        section, key = old.split(".")
        if not isinstance(tree.get(section), dict) or key not in tree[section]:
            continue
        to_section, to_key = new.split(".")
        target = tree.setdefault(to_section, {})
        if not isinstance(target, dict):
            continue  # from_dict names the section that is not a mapping
        if to_key in target:
            raise MedtlError(f"{where + ': ' if where else ''}{old} and {new} both given (the same setting under its "
                             f"old and new name); keep only {new}")
        _notice(old, new, where)
        target[to_key] = tree[section].pop(key)
    _refuse_misplaced(tree, where, fields)
    return tree


def _refuse_misplaced(tree: dict, where: str, fields: dict[str, set[str]]) -> None:
    """A setting written in the wrong section, or at the top level, names the section it belongs to."""
    places = [(section, tree[section]) for section in fields if isinstance(tree.get(section), dict)]
    places.append(("", {k: v for k, v in tree.items() if k not in fields}))
    for section, values in places:
        for key in values:
            owners = sorted(s for s, names in fields.items() if key in names and s != section)
            if owners and (not section or key not in fields[section]):
                shown = f"{section}.{key}" if section else str(key)
                raise MedtlError(f"{where + ': ' if where else ''}{shown} is not a setting of "
                                 f"{'section ' + section if section else 'the top level'}; it belongs to section "
                                 f"{owners[0]}: write {owners[0]}.{key}")
