"""The CLIP BPE vocabulary: where its merges file comes from, and the tokenizer files built from it.

The merges file `bpe_simple_vocab_16e6.txt.gz` (OpenAI's, 1.36 MB) ships inside the
open-clip-torch wheel on PyPI. We find it in this order: an explicit path, a cached copy under the
cache dir, or a `pip download --no-deps` of that wheel from which only this one member is
extracted (the wheel is never installed). Its sha256 is pinned, so a wrong or damaged file is
refused rather than silently giving a different vocabulary.

From it we write the standard CLIP tokenizer files `vocab.json` and `merges.txt` with OpenAI's
construction: the 256 byte-level symbols, the same with `</w>`, the first 48,894 merges joined,
then `<|startoftext|>` and `<|endoftext|>`: 49,408 tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from covergen.errors import ConfigError
from covergen.models.cache import publish_directory, staging_dir, write_file_atomically

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_WHEEL_REQUIREMENT = "open-clip-torch==3.3.0"
BPE_WHEEL_MEMBER = f"open_clip/{BPE_FILE_NAME}"

NUM_MERGES = 48_894  # OpenAI CLIP: 49,152 - 256 - 2 merges, after the header line
VOCAB_SIZE = 49_408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# tokenizer_config.json (model_max_length 77: without it the pipeline overflows converting a huge
# int) and special_tokens_map.json are shipped once, with the SD 1.5 configs, and copied from there.
SHIPPED_TOKENIZER_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs/sd15/tokenizer"

_PIP_TIMEOUT_S = 300


def byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from each byte to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points from 256 on,
    in byte order. The dict's insertion order is the order of the first 256 vocabulary entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = list(printable)
    code_points = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points, strict=True)}


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_bpe_file(path: Path, *, origin: str) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"CLIP merges file {path} ({origin}) does not exist; pass the path of "
            f"{BPE_FILE_NAME} from the {BPE_WHEEL_REQUIREMENT} wheel, or leave it unset to fetch it"
        )
    digest = _sha256_of(path)
    if digest != BPE_SHA256:
        raise ConfigError(
            f"CLIP merges file {path} ({origin}) has sha256 {digest}, expected {BPE_SHA256}; "
            f"it is not OpenAI's {BPE_FILE_NAME}: delete it, or pass the file from the "
            f"{BPE_WHEEL_REQUIREMENT} wheel"
        )
    return path


def _download_bpe_file(destination: Path) -> None:
    """Fetch the open-clip-torch wheel with pip (no install) and extract only the merges file."""
    with tempfile.TemporaryDirectory(prefix="covergen-clip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", BPE_WHEEL_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True,
                           timeout=_PIP_TIMEOUT_S)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ConfigError(
                f"could not download {BPE_WHEEL_REQUIREMENT} to get the CLIP vocabulary "
                f"({detail.strip()[-300:]}); on an offline machine copy {BPE_FILE_NAME} "
                f"(sha256 {BPE_SHA256}) from that wheel to {destination}"
            ) from exc
        wheels = sorted(Path(tmp).glob("open_clip_torch-*.whl"))
        if not wheels:
            raise ConfigError(
                f"pip download of {BPE_WHEEL_REQUIREMENT} produced no wheel in {tmp}; copy "
                f"{BPE_FILE_NAME} from that wheel to {destination}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(BPE_WHEEL_MEMBER)
    write_file_atomically(destination, data)


def find_bpe_file(cache_dir: Path, explicit: Path | None = None) -> Path:
    """The verified CLIP merges file: `explicit`, else the cached copy, else downloaded to cache."""
    if explicit is not None:
        return _check_bpe_file(explicit, origin="given explicitly")
    cached = cache_dir / "clip-bpe" / BPE_FILE_NAME
    if not cached.is_file():
        _download_bpe_file(cached)
    return _check_bpe_file(cached, origin="cached copy")


def read_merges(bpe_file: Path) -> list[tuple[str, str]]:
    """The first 48,894 merges of the gzipped merges file, skipping its header line."""
    lines = gzip.decompress(bpe_file.read_bytes()).decode("utf-8").split("\n")
    pairs = [line.split() for line in lines[1 : NUM_MERGES + 1]]
    merges = [(pair[0], pair[1]) for pair in pairs if len(pair) == 2]
    if len(merges) != NUM_MERGES:
        raise ConfigError(
            f"{bpe_file} holds {len(merges)} well-formed merges in its first {NUM_MERGES} lines; "
            f"expected {NUM_MERGES}: replace it with OpenAI's {BPE_FILE_NAME}"
        )
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's token -> id table: bytes, bytes + `</w>`, joined merges, then the two specials."""
    symbols = list(byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer_files(cache_dir: Path, bpe_file: Path | None = None) -> Path:
    """A directory holding the full CLIP tokenizer files, built once under `cache_dir`.

    Returns `<cache_dir>/clip-tokenizer/`, with `vocab.json`, `merges.txt` and the shipped
    `tokenizer_config.json` and `special_tokens_map.json`; `CLIPTokenizer.from_pretrained` reads
    it offline. Built in a temporary sibling and renamed into place, so a crash leaves no half
    directory.
    """
    target = cache_dir / "clip-tokenizer"
    if (target / "vocab.json").is_file():
        return target
    merges = read_merges(find_bpe_file(cache_dir, bpe_file))
    vocab = build_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise ConfigError(f"built a CLIP vocabulary of {len(vocab)} tokens, expected {VOCAB_SIZE}")
    staging = staging_dir(target)
    (staging / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    (staging / "merges.txt").write_text(merges_text, encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(SHIPPED_TOKENIZER_CONFIG_DIR / name, staging / name)
    publish_directory(staging, target)
    return target

