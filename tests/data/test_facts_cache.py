"""The image facts cache (data/facts_cache.py): a rerun reads no image file for its digests and audit facts,
a changed file is read again, and a hostile or interrupted cache never gives a wrong fact."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from medtl.core.errors import MedtlError
from medtl.data import audit, facts_cache, images
from medtl.data.facts_cache import FILE, FactsCache, FileFacts, Stamp

STAMP = Stamp(1, 2, 3, 4)


@pytest.fixture
def one_image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (40, 30), 100).save(path)
    _settle(path)
    return str(path)


def _settle(path, age_s: int = 3600) -> None:
    """Date the file an hour back: files modified in the last seconds are not kept (RACY_NS)."""
    os.utime(path, ns=(time.time_ns() - age_s * 10**9,) * 2)


@pytest.fixture
def cache(tmp_path):
    folder = tmp_path / "cache"
    yield facts_cache.use(folder)
    facts_cache.use(None)


def _counted_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = images.read_bytes
    monkeypatch.setattr(images, "read_bytes", lambda ref: reads.append(ref) or real(ref))
    images._digest_of.cache_clear()
    return reads


def test_facts_read_once_then_from_the_cache_until_the_file_changes(one_image, cache, monkeypatch):
    reads = _counted_reads(monkeypatch)
    first = audit.read_facts([(one_image, "train", 0)], perceptual=True)[0]
    assert reads == [one_image] and (first.width, first.height, first.mode, first.format) == (40, 30, "L", "PNG")
    images._digest_of.cache_clear()  # as in a new process
    again = audit.read_facts([(one_image, "val", 1)], perceptual=True)[0]
    assert reads == [one_image] and (again.sha1, again.phash, again.split) == (first.sha1, first.phash, "val")
    assert images.content_digest(one_image).hex() == first.sha1 and reads == [one_image]
    Image.new("L", (41, 30), 100).save(one_image)  # rewritten in place: new size and time
    changed = audit.read_facts([(one_image, "train", 0)], perceptual=True)[0]
    assert reads == [one_image, one_image] and changed.width == 41 and changed.sha1 != first.sha1


def test_a_file_modified_seconds_ago_is_read_again_not_kept(one_image, cache, monkeypatch):
    """A second write within the file system's time resolution, same size, would keep the file's time: facts of
    a file that recent are not kept."""
    Image.new("L", (40, 30), 200).save(one_image)  # just now
    reads = _counted_reads(monkeypatch)
    audit.read_facts([(one_image, "train", 0)], perceptual=True)
    assert cache.get(one_image, images.file_stat(one_image)) is None
    images._digest_of.cache_clear()
    audit.read_facts([(one_image, "train", 0)], perceptual=True)
    assert reads == [one_image, one_image]
    _settle(one_image)
    audit.read_facts([(one_image, "train", 0)], perceptual=True)
    assert cache.get(one_image, images.file_stat(one_image)) is not None


def test_header_only_facts_do_not_answer_a_perceptual_read(one_image, cache):
    header = audit.read_facts([(one_image, "train", 0)], perceptual=False)[0]
    assert header.phash == 0
    kept = cache.get(one_image, images.file_stat(one_image))
    assert kept is not None and kept.phash is None
    full = audit.read_facts([(one_image, "train", 0)], perceptual=True)[0]
    assert full.phash != 0 and cache.get(one_image, images.file_stat(one_image)).phash == full.phash


def test_unreadable_files_are_not_kept(tmp_path, cache):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    facts = audit.read_facts([(str(bad), "train", 0)], perceptual=True)[0]
    assert facts.error and cache.get(str(bad), images.file_stat(str(bad))) is None


def test_a_hostile_row_is_read_again_not_trusted(one_image, cache, monkeypatch):
    audit.read_facts([(one_image, "train", 0)], perceptual=True)
    stamp = images.file_stat(one_image)
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE facts SET sha1 = ?, phash = 'zz' WHERE ref = ?", (b"short", one_image))
    assert cache.get(one_image, stamp) is None
    reads = _counted_reads(monkeypatch)
    facts = audit.read_facts([(one_image, "train", 0)], perceptual=True)[0]
    assert reads == [one_image] and len(bytes.fromhex(facts.sha1)) == 20
    assert cache.get(one_image, stamp).sha1.hex() == facts.sha1  # the bad row replaced


def test_a_file_that_is_not_a_database_is_set_aside_and_rebuilt(tmp_path, one_image, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / FILE).write_bytes(b"garbage " * 512)
    with caplog.at_level(logging.WARNING):
        cache = FactsCache(folder)
    assert "not a readable database" in caplog.text and (folder / f"{FILE}.unreadable").is_file()
    cache.put([(one_image, FileFacts(STAMP, b"x" * 20, 5, "PNG", "L", bits=8, width=4, height=4))])
    assert cache.get(one_image, STAMP).phash == 5
    cache.close()


def test_a_failed_write_keeps_earlier_rows_and_adds_none(tmp_path):
    cache = FactsCache(tmp_path)
    good = FileFacts(STAMP, b"x" * 20, 5, "PNG", "L", bits=8, width=4, height=4)
    cache.put([("a", good)])
    with pytest.raises(OverflowError):  # the second row cannot be stored: the whole write is undone
        cache.put([("b", good),
                   ("c", FileFacts(Stamp(1 << 70, 2, 3, 4), b"x" * 20, 5, "PNG", "L", bits=8, width=4, height=4))])
    assert cache.get("a", STAMP) == good and cache.get("b", STAMP) is None
    cache.close()


def test_a_cache_folder_that_cannot_hold_the_file_is_one_line(tmp_path):
    folder = tmp_path / "cache"
    (folder / FILE).mkdir(parents=True)  # a folder where the database file should be
    with pytest.raises(MedtlError, match="facts cache .* cannot be opened .*MEDTL_CACHE"):
        FactsCache(folder)


def test_a_file_rewritten_with_its_old_size_and_time_is_read_again(one_image, cache, monkeypatch):
    """As a folder unpacked again from an archive (times restored) or a fixed-size format rewritten: the
    status-change time, which no tool sets back, tells it changed."""
    first = audit.read_facts([(one_image, "train", 0)], perceptual=True)[0]
    before = os.stat(one_image)
    data = bytearray(Path(one_image).read_bytes())
    data[-20:-12] = bytes(b ^ 0xFF for b in data[-20:-12])  # same length, other bytes
    Path(one_image).write_bytes(bytes(data))
    os.utime(one_image, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(one_image)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    reads = _counted_reads(monkeypatch)
    again = audit.read_facts([(one_image, "train", 0)], perceptual=False)[0]
    assert reads == [one_image] and again.sha1 != first.sha1


def test_a_rewritten_npz_gives_its_new_arrays_in_one_process(tmp_path, cache):
    import numpy as np

    path = tmp_path / "set.npz"
    np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros(2))
    ref = f"{path}{images.NPZ_SEP}train{images.NPZ_SEP}0"
    first = images.content_digest(ref)
    np.savez(path, train_images=np.full((2, 8, 8), 9, np.uint8), train_labels=np.zeros(2))
    assert images.content_digest(ref) != first and images.open_image(ref).getpixel((0, 0)) == 9
