"""The models cache dir: where it is, and publishing into it so readers never see half a thing.

Everything the models package writes under the cache dir (tokenizer files, the embedded model,
assembled config dirs, the hash sidecar) is first written to a temporary sibling and then renamed
into place; a rename within one file system is atomic. When two processes build the same thing
at once, the first rename wins and the loser's copy is discarded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CACHE_DIR_ENV = "COVERGEN_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$COVERGEN_CACHE_DIR` if set, else `.cache/covergen` at the repository root.

    Outside a source checkout (no pyproject.toml three levels above the package) the fallback is
    `~/.cache/covergen`. The environment is read on each call, never at import.
    """
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    repo_root = Path(__file__).resolve().parents[3]
    if (repo_root / "pyproject.toml").is_file():
        return repo_root / ".cache" / "covergen"
    return Path.home() / ".cache" / "covergen"


def staging_dir(target: Path) -> Path:
    """A fresh empty directory next to `target`, to be filled and then `publish_directory`-ed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))


def publish_directory(staging: Path, target: Path) -> None:
    """Rename a finished `staging` dir to `target`; if another process won the race, keep theirs."""
    staging.chmod(0o755)  # mkdtemp made it 0700; the cache may be shared with other users
    try:
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def write_file_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a temporary sibling and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)  # mkstemp made it 0600
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
