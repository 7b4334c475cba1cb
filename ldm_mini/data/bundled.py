"""The datasets shipped as parquet shards in ``data/``, described by ``data/MANIFEST.json``.

Each shard's sha256 is checked (once per process and file version) before ``datasets`` reads
it, so a damaged or missing file fails loudly with the command that rebuilds it.
Taught in notebook 00_setup_and_data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm_mini.data.errors import DamagedShardError, DataDirNotFoundError

MANIFEST_NAME = "MANIFEST.json"
DATA_DIR_ENV = "LDM_MINI_DATA"


def data_dir() -> Path:
    """Return the folder holding the bundled datasets.

    Looked up in order: ``$LDM_MINI_DATA``; ``data/`` inside an installed wheel
    (``ldm_mini/_bundled_data``); ``data/`` of the repository an editable install points to.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / MANIFEST_NAME).is_file():
            raise DataDirNotFoundError(
                f"${DATA_DIR_ENV} is set to {path}, but {path / MANIFEST_NAME} does not exist. "
                f"Point it at the repository's data/ folder, or unset it."
            )
        return path
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_bundled_data", package_dir.parent / "data"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise DataDirNotFoundError(
        "Cannot find the bundled datasets (data/MANIFEST.json). Install ldm-mini from a clone of "
        "the repository (pip install -e .) or set $LDM_MINI_DATA to its data/ folder."
    )


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    """Read ``MANIFEST.json``: per dataset its metadata and, per split, its shard files."""
    directory = data_dir() if directory is None else directory
    path = directory / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DamagedShardError(
            f"Cannot read the data manifest {path}: {err}. Restore it with "
            f"`git checkout -- data/{MANIFEST_NAME}` or rebuild with "
            "`python tools/build_datasets.py all`."
        ) from err


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# (path, size, mtime_ns) -> sha256 already verified in this process.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_shard(path: Path, expected_sha256: str, rebuild_command: str) -> None:
    """Raise :class:`DamagedShardError` naming ``path`` when it is missing or altered."""
    relative = _display_path(path)
    fix = (
        f"Restore it with `git checkout -- {relative}` (or `git lfs pull`), "
        f"or rebuild it with `{rebuild_command}`."
    )
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DamagedShardError(f"Bundled shard {path} is missing. {fix}") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == expected_sha256:
        return
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise DamagedShardError(
            f"Bundled shard {path} is damaged: sha256 {actual[:16]}... does not match the "
            f"manifest's {expected_sha256[:16]}.... {fix}"
        )
    _VERIFIED[key] = expected_sha256


def _display_path(path: Path) -> str:
    """``data/<name>/<file>`` when the file sits in a folder called data, else the full path."""
    parts = path.parts
    if "data" in parts:
        index = len(parts) - 1 - parts[::-1].index("data")
        return "/".join(parts[index:])
    return str(path)


@dataclass(frozen=True)
class SplitFiles:
    """The verified shard paths of one split of a bundled dataset."""

    name: str
    split: str
    paths: tuple[Path, ...]
    num_rows: int


def split_files(name: str, split: str, directory: Path | None = None) -> SplitFiles:
    """Look up and verify the shards of ``name``/``split``; raises on unknown split or damage."""
    directory = data_dir() if directory is None else directory
    entry = read_manifest(directory)[name]
    splits = entry["splits"]
    if split not in splits:
        raise ValueError(
            f"Dataset {name!r} has no split {split!r}; its splits are {sorted(splits)}."
        )
    paths = []
    for shard in splits[split]["files"]:
        path = directory / shard["path"]
        verify_shard(path, shard["sha256"], entry["build_command"])
        paths.append(path)
    return SplitFiles(name, split, tuple(paths), int(splits[split]["num_rows"]))


def load_bundled(name: str, split: str, directory: Path | None = None):
    """Load a bundled dataset split as a ``datasets.Dataset`` (shards verified first)."""
    import datasets

    files = split_files(name, split, directory)
    try:
        dataset = datasets.load_dataset(
            "parquet", data_files={split: [str(p) for p in files.paths]}, split=split
        )
    except Exception as err:  # pyarrow raises several types for unreadable parquet
        entry = read_manifest(directory)[name]
        raise DamagedShardError(
            f"Cannot read the bundled shards {[str(p) for p in files.paths]}: {err}. "
            f"Rebuild them with `{entry['build_command']}`."
        ) from err
    if len(dataset) != files.num_rows:
        raise DamagedShardError(
            f"{name}/{split} has {len(dataset)} rows, the manifest says {files.num_rows}. "
            f"Rebuild with `{read_manifest(directory)[name]['build_command']}`."
        )
    return dataset
