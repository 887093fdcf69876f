"""Folders that must stay inside themselves: bundles and hub downloads.

A bundle names its parts by relative paths (``"saes": "saes"``) and a hub repo is a tree of
files; either can come from someone else. A path that leaves the folder (``../..``, an
absolute path, or a symlink to elsewhere) would make a downloaded file read, or a command
write, what its publisher chose on the user's machine: such folders are refused with the
path that escapes.

The Hugging Face cache keeps each snapshot's files as symlinks into the repo's ``blobs``
folder (``models--owner--name/snapshots/<rev>/x -> ../../blobs/<hash>``), so for a snapshot
the repo's cache folder is the boundary, not the snapshot folder itself.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from saeuron.utils.errors import FileFormatError

SNAPSHOTS = "snapshots"
"""The Hugging Face cache's folder of revisions inside a repo's cache folder."""


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies in ``root`` (symlinks resolved too)."""
    return path.resolve().is_relative_to(root.resolve())


def boundary(folder: Path) -> Path:
    """The folder a tree's links may point into: the repo's cache folder for a hub snapshot
    (``.../models--o--n/snapshots/<rev>``), else the folder itself."""
    if folder.parent.name == SNAPSHOTS:
        return folder.parent.parent
    return folder


def check_relative(folder: Path, relative: str, field: str, source: Path) -> Path:
    """``folder / relative``, refused (naming ``field`` of ``source``) when ``relative`` is
    absolute, climbs out with ``..`` or reaches outside ``folder`` through a symlink."""
    pure = PurePosixPath(relative.replace("\\", "/"))
    if (
        pure.is_absolute()
        or PureWindowsPath(relative).is_absolute()
        or PureWindowsPath(relative).drive
        or ".." in pure.parts
    ):
        raise FileFormatError(
            source, f"{field} is {relative!r}; it must be a path inside {folder} (no '..', "
            "not absolute)"
        )  # fmt: skip
    target = folder / relative
    if target.exists() and not is_inside(target, boundary(folder)):
        raise FileFormatError(
            source,
            f"{field} is {relative!r}, which leads through a symlink to {target.resolve()}, "
            f"outside {folder}; refusing it",
        )
    return target


def check_tree_inside(folder: Path, what: str = "folder") -> Path:
    """``folder``, refused when any file or folder in it is a symlink to somewhere outside
    it (its repo's cache folder, for a hub snapshot). Links are not followed while walking,
    so a link to ``/`` is found without reading the whole disk."""
    root = boundary(folder).resolve()
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(current) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise FileFormatError(
                    path,
                    f"this {what} links to {path.resolve()}, outside {folder}; refusing a "
                    "folder whose paths escape it",
                )
    return folder
