"""Patient keys as keyed pseudonyms: what every output (predictions, metrics, cards, logs) shows of a patient.

A key read from a manifest, a DICOM header or a path becomes `pt-` and 16 hex digits of an HMAC-SHA256 with a
secret kept in the user's medtl cache (`pseudonym.key`, made once with 32 random bytes, readable by its owner
only), so the runs of one site agree with each other while no output holds the clear ID and nobody without
the secret can test a guess. `data.reveal_ids=true` (`--reveal-ids`) keeps the clear keys; the record says so.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medtl.core.errors import MedtlError
from medtl.core.io import cache_root

FILE = "pseudonym.key"
PREFIX = "pt-"
SECRET_HEX = 64  # 32 bytes


def secret(folder: Path | None = None) -> bytes:
    """The site's secret from `folder` (default: the medtl cache), made there on first use; two processes that
    make it at once agree on the first one written."""
    folder = Path(folder) if folder is not None else cache_root()
    path = folder / FILE
    try:
        if not path.exists():
            _make(folder, path)
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise MedtlError(f"{path}: the pseudonym secret cannot be kept there ({type(exc).__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc}); point MEDTL_CACHE at a folder you can write, or "
                         "pass --reveal-ids to write the keys in clear") from exc
    if len(text) != SECRET_HEX or any(c not in "0123456789abcdef" for c in text):
        raise MedtlError(f"{path} is not a medtl pseudonym secret ({SECRET_HEX} hex digits); delete it to make a new "
                         "one (pseudonyms of earlier runs will then differ from new ones)")
    return bytes.fromhex(text)


def _make(folder: Path, path: Path) -> None:
    """A new secret at `path`, readable by its owner only; another process's, made first, is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(SECRET_HEX // 2) + "\n")
    try:
        os.link(tmp, path)  # fails when another process made it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def pseudonym(key: str, key_secret: bytes) -> str:
    """The pseudonym of one clear key."""
    return PREFIX + hmac.new(key_secret, key.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def pseudonymise(keys: dict[str, str], reveal: bool, folder: Path | None = None) -> dict[str, str]:
    """{ref: pseudonym} of {ref: clear key} ({} stays {}, and nothing is made); the keys as they are with
    `reveal`."""
    if reveal or not keys:
        return dict(keys)
    key_secret = secret(folder)
    named = {k: pseudonym(k, key_secret) for k in set(keys.values())}
    return {ref: named[k] for ref, k in keys.items()}
