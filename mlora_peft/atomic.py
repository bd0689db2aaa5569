"""Replacing a saved file or folder atomically: write beside it, then swap it in with renames."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it into place; returns `path`.

    Example:
        >>> import tempfile, pathlib
        >>> write_text_atomic(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hi").read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` on a new folder beside `target`, then put it in `target`'s place.

    If `write` fails, `target` is untouched and the staging folder is removed. The swap is two
    renames (`target` aside, staging in); a failure of the second puts `target` back, and a crash
    between them leaves the previous folder as `.<name>.previous-*` beside it.

    Args:
        target: the folder to create or replace.
        write: fills the folder it is given.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "save"
        >>> write_atomically(target, lambda folder: (folder / "a.txt").write_text("hi"))
        >>> (target / "a.txt").read_text()
        'hi'
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    previous = staging.with_name(staging.name.replace(".saving-", ".previous-"))
    try:
        write(staging)
        if not target.exists():
            os.replace(staging, target)
            return
        os.replace(target, previous)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(previous, target)
            raise
        shutil.rmtree(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(target: Path, keep: Collection[str]) -> None:
    """Refuse to replace a folder holding entries other than `keep` and `*.json` files.

    Raises:
        ValueError: `target` is a file, or holds other entries (a save would delete them).
    """
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"save_directory {target} is a file; pass a folder path.")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in keep and p.suffix != ".json")
    if foreign:
        raise ValueError(f"save_directory {target} holds other files ({foreign[:5]}) that a save would delete; "
                         "save into a new or empty folder.")


def extra_json_files(target: Path, skip: Collection[str]) -> list[Path]:
    """The `*.json` files at the top of `target`, except the names in `skip` (to carry into a new save)."""
    if not target.is_dir():
        return []
    return [p for p in sorted(target.glob("*.json")) if p.name not in skip and p.is_file()]
