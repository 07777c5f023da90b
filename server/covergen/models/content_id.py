"""Content ids: a short sha256 that names a base model by the bytes of its files.

Result caches key on it, so two servers with the same weights share cache entries and a changed
checkpoint never serves stale covers. Hashing a 4 GB checkpoint takes seconds, so each file's
digest is kept in a sidecar JSON under the cache dir, keyed by resolved path, size and mtime: a
file is hashed again only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from covergen.models.cache import write_file_atomically

SIDECAR_NAME = "file-digests.json"
CONTENT_ID_LENGTH = 16  # hex characters
_CHUNK_BYTES = 8 * 1024 * 1024


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sidecar(sidecar: Path) -> dict[str, dict[str, object]]:
    try:
        entries = json.loads(sidecar.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def file_digest(path: Path, cache_dir: Path) -> str:
    """The sha256 of `path`'s bytes, from the sidecar when size and mtime are unchanged."""
    resolved = path.resolve()
    stat = resolved.stat()
    sidecar = cache_dir / SIDECAR_NAME
    entries = _read_sidecar(sidecar)
    entry = entries.get(str(resolved))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = _sha256_file(resolved)
    entries = _read_sidecar(sidecar)  # re-read: another process may have added entries meanwhile
    entries[str(resolved)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    write_file_atomically(sidecar, json.dumps(entries, indent=1, sort_keys=True).encode())
    return digest


def content_id(files: dict[str, Path], cache_dir: Path) -> str:
    """A short id over named files: sha256 of the sorted `name digest` lines.

    `files` maps a stable name (e.g. the path relative to the model directory) to the file; the
    names take part, so moving a weight file between components changes the id.
    """
    lines = [f"{name} {file_digest(path, cache_dir)}\n" for name, path in sorted(files.items())]
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:CONTENT_ID_LENGTH]


def directory_files(root: Path) -> dict[str, Path]:
    """Every regular, non-hidden file under `root`, keyed by its POSIX path relative to `root`."""
    return {
        path.relative_to(root).as_posix(): path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }
