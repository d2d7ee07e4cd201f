"""Which version of a file a run read: files are opened once and checked against what was read first, so
that nothing is read from two versions of one file (a TSV, a checkpoint, a backbone rewritten mid-run)."""
import os
from typing import Union

from .errors import InputError


class FileChangedError(InputError, RuntimeError):
    """A file changed on disk while a run was using it."""


def file_version(file: Union[str, int]) -> tuple:
    """What tells one version of a file (a path, or an open descriptor) from another: its inode, size and
    modification time."""
    st = os.fstat(file) if isinstance(file, int) else os.stat(file)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def describe_change(before: tuple, after: tuple) -> str:
    if before[:2] != after[:2]:
        return "another file now has its name"
    if before[2] != after[2]:
        return f"{before[2]} bytes then, {after[2]} now"
    return "modified since"


def check_unchanged(path: str, before: tuple, now: tuple, when: str):
    if now != before:
        raise FileChangedError(f"{path} changed on disk {when} ({describe_change(before, now)}): write new "
                               "versions under another name, or by renaming over the old file once complete, "
                               "and start again")
