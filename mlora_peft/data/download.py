"""Fetching a public zip archive into a local cache (used by loaders whose data has a public URL)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

DEFAULT_CACHE = Path("~/.cache/mlora_peft")


def cache_path(cache_dir: Optional[Union[str, os.PathLike]], name: str) -> Path:
    """The cache folder to use.

    Args:
        cache_dir: a folder chosen by the caller, or None.
        name: subfolder of the default cache.

    Returns:
        `cache_dir` (user-expanded), or `~/.cache/mlora_peft/<name>`.

    Example:
        >>> cache_path("/data/cache", "movielens")
        PosixPath('/data/cache')
    """
    return Path(cache_dir).expanduser() if cache_dir is not None else (DEFAULT_CACHE / name).expanduser()


def fetch_zip(url: str, target: Path, expected: Sequence[str], *, strip_components: int = 0,
              timeout: float = 60.0) -> Path:
    """Download the zip at `url` and extract it into `target`, unless `expected` files are already there.

    Args:
        url: an http(s) or file URL of a zip archive.
        target: the extraction folder (created if needed).
        expected: paths relative to `target` that the archive must provide.
        strip_components: leading folders dropped from member paths (1 puts `ml-100k/u.data` at `target/u.data`).
        timeout: seconds to wait for the server.

    Returns:
        `target`.

    Raises:
        OSError: the download failed (the message names the URL).
        ValueError: the archive has unsafe member paths or lacks an expected file.

    Example:
        >>> fetch_zip("https://files.grouplens.org/datasets/movielens/ml-100k.zip", Path("cache"),
        ...           ["u.data"], strip_components=1)  # doctest: +SKIP
        PosixPath('cache')
    """
    if all((target / name).is_file() for name in expected):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target, suffix=".zip.part", delete=False) as handle:
        partial = Path(handle.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, handle, length=1 << 20)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise OSError(
                f"Could not download {url}: {error}. Download it by hand and pass its folder as path."
            ) from error
    try:
        _extract(partial, target, strip_components)
    finally:
        partial.unlink(missing_ok=True)
    missing = [name for name in expected if not (target / name).is_file()]
    if missing:
        raise ValueError(f"The archive from {url} lacks {missing}; check the URL or the version asked for.")
    return target


def _extract(archive: Path, target: Path, strip_components: int) -> None:
    """Extract the files, dropping leading folders, after checking that none escapes `target`."""
    root = target.resolve()
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            parts = Path(member.filename).parts[strip_components:]
            if member.is_dir() or not parts:
                continue
            destination = root.joinpath(*parts).resolve()
            if root not in destination.parents:
                raise ValueError(
                    f"Archive member {member.filename!r} would be written outside {root}; refusing to extract."
                )
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(member) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
