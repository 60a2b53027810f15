"""What a run keeps about the images it trained and chose on: their content digests and perceptual hashes
(no paths, no pixels), so that an evaluation elsewhere can find exact and near copies of them without the
training data. Near copies are found as `medtl audit` finds them: 64-bit perceptual hashes at most
`audit.NEAR_BITS` bits apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtl.core.io import write_json
from medtl.core.runfolder import RunFolder
from medtl.data.audit import NEAR_BITS, Facts, read_facts
from medtl.data.splits import DataSplits

KEPT_SPLITS = ("train", "val")  # the images that trained the model and chose it
VERSION = 1


@dataclass
class ImageKeys:
    """Per kept split: SHA-1 digests (hex) and 64-bit perceptual hashes of its readable images."""

    digests: dict[str, list[str]]
    phashes: dict[str, np.ndarray]  # uint64

    @property
    def splits(self) -> list[str]:
        return list(self.digests)


def facts_of(refs: list[str], known: dict[str, Facts] | None = None) -> list[Facts]:
    """Digest and perceptual hash of each ref (unreadable ones carry `error`): from `known` (the audit's, collected
    before training) where it holds them, the others read in threads."""
    known = known or {}
    missing = [r for r in refs if r not in known]
    found = dict(zip(missing, read_facts([(r, "", 0) for r in missing], perceptual=True)))
    return [known.get(r) or found[r] for r in refs]


def write_image_keys(folder: str | Path | RunFolder, splits: DataSplits,
                     known: dict[str, Facts] | None = None) -> ImageKeys:
    """image_keys.json in the run folder: digests and perceptual hashes of the train and val images; returns
    them. Called once at the end of training; `medtl evaluate` reads it to count and leave out copies of these
    images, and the run's own deduplicated test metrics can use the keys returned (`without_copies`)."""
    out = {"version": VERSION, "near_bits": NEAR_BITS, "splits": {}}
    for split in KEPT_SPLITS:
        facts = [f for f in facts_of(splits.refs.get(split, []), known) if not f.error]
        out["splits"][split] = {"sha1": [f.sha1 for f in facts], "phash": [f"{f.phash:016x}" for f in facts]}
    write_json(RunFolder(folder if not isinstance(folder, RunFolder) else folder.path).image_keys, out)
    return _keys(out)


def _keys(data: dict) -> ImageKeys:
    return ImageKeys({s: list(d["sha1"]) for s, d in data["splits"].items()},
                     {s: np.array([int(h, 16) for h in d["phash"]], dtype=np.uint64) for s, d in data["splits"].items()})


def read_image_keys(folder: str | Path | RunFolder) -> ImageKeys | None:
    """The run's image keys, or None for a run made before runs kept them."""
    path = RunFolder(folder if not isinstance(folder, RunFolder) else folder.path).image_keys
    if not path.is_file():
        return None
    return _keys(json.loads(path.read_text()))


def find_copies(facts: list[Facts], keys: ImageKeys, max_bits: int = NEAR_BITS) -> list[dict]:
    """Per evaluated image: {"kind": "exact" | "near" | "", "split": the kept split holding its copy, "bits"}.
    Exact (same bytes) wins over near (perceptual hashes at most `max_bits` apart, 512 rows at a time)."""
    exact = {d: s for s in keys.splits for d in keys.digests[s]}
    found = [{"kind": "exact", "split": exact[f.sha1], "bits": 0} if not f.error and f.sha1 in exact
             else {"kind": "", "split": "", "bits": None} for f in facts]
    todo = [i for i, f in enumerate(facts) if not f.error and not found[i]["kind"]]
    if not todo:
        return found
    hashes = np.array([facts[i].phash for i in todo], dtype=np.uint64)
    for split in keys.splits:
        kept = keys.phashes[split]
        if not len(kept):
            continue
        for start in range(0, len(hashes), 512):
            dist = np.bitwise_count(hashes[start:start + 512, None] ^ kept[None, :]).min(1)
            for j, bits in enumerate(dist.tolist()):
                row = found[todo[start + j]]
                if bits <= max_bits and (row["bits"] is None or bits < row["bits"]):
                    row.update(kind="near", split=split, bits=int(bits))
    return found


def without_copies(refs: list[str], keys: ImageKeys,
                   known: dict[str, Facts] | None = None) -> tuple[np.ndarray, list[dict], dict]:
    """(indices of `refs` with no exact or near copy among the kept images, the per-image copy rows, counts
    {"copies", "exact_train", "near_val", ...}): what the deduplicated test metrics leave out."""
    rows = find_copies(facts_of(refs, known), keys)
    counts = {f"{kind}_{split}": sum(r["kind"] == kind and r["split"] == split for r in rows)
              for kind in ("exact", "near") for split in keys.splits}
    kept = np.array([i for i, r in enumerate(rows) if not r["kind"]], dtype=np.int64)
    return kept, rows, {"copies": int(len(rows) - len(kept)), **counts}
