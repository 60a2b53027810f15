"""Which images must stay on one side of a carved split: byte-identical copies, and optionally perceptual
near-duplicates (clusters of images whose 64-bit perceptual hashes differ in at most a few bits).

Near-duplicate clusters are a proxy for patients when a data set has no patient IDs (adjacent CT slices, the
same X-ray re-exported): they catch re-encodings, resizes and small edits, not two different images of one
patient, so a manifest with patient IDs remains the reliable way to split by patient."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medtl.data.audit import NEAR_BITS, near_pairs, read_facts
from medtl.data.images import READ_ERRORS, content_digest


def content_groups(refs: list[str], near: bool = False) -> dict[str, str]:
    """ref -> group key: the SHA-1 of its bytes, or with `near` the key of its near-duplicate cluster."""
    with ThreadPoolExecutor() as pool:
        digests = list(pool.map(_digest, refs))
    groups = dict(zip(refs, digests))
    if not near:
        return groups
    facts = read_facts([(r, "", 0) for r in refs], perceptual=True)
    return _clusters(groups, [f.ref for f in facts if not f.error],
                     np.array([f.phash for f in facts if not f.error], dtype=np.uint64))


def _digest(ref: str) -> str:
    try:
        return content_digest(ref).hex()
    except READ_ERRORS:
        return f"unreadable:{ref}"  # its own group; decoding reports it later


def _clusters(groups: dict[str, str], refs: list[str], hashes: np.ndarray) -> dict[str, str]:
    """Union-find over exact groups and near pairs (at most NEAR_BITS apart); each cluster keyed by a member's
    content key."""
    parent = {g: g for g in groups.values()}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i, j, _ in near_pairs(hashes, NEAR_BITS):
        a, b = root(groups[refs[i]]), root(groups[refs[j]])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {ref: root(g) for ref, g in groups.items()}
