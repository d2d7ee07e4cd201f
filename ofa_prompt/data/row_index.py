"""A record of where a TSV file's checked rows lie, kept so that later runs need not check them again.

Checking every row when a file is opened (decoding each image's header, parsing boxes and answers) costs
about a millisecond a row: minutes for VQAv2 or COCO, on every rank and every reload. The first run that
checks a file writes what it found (the rows' byte ranges and line numbers, the bad rows skipped, the
blank lines, and what the task's check counted) beside the file as `.NAME.ofa-index.npz`, or, where that
folder cannot be written, under $XDG_CACHE_HOME/ofa_prompt/tsv-index (~/.cache by default). A later run
uses the record only if it was made

- from this very version of the file: same device, inode, size and modification time (file_version);
- with the same check: the same columns, --skip-bad-rows, task and task options, and plugin version
  (`key`).

Anything else (a file rewritten or touched, another task option) checks the file again and replaces the
record. The rows read later are the same bytes either way: rows are always read from the checked version.
A record that cannot be read or written is ignored with a warning; nothing depends on it.
"""
import hashlib
import json
import logging
import os
from array import array
from typing import Optional

import numpy as np

from ..atomic_file import atomic_path

logger = logging.getLogger(__name__)

FORMAT = "ofa_prompt.tsv-index/1"


def record_paths(path: str):
    """Where the record of `path` may be: beside it, then in the user's cache."""
    folder, name = os.path.split(os.path.abspath(path))
    yield os.path.join(folder, f".{name}.ofa-index.npz")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:24]
    yield os.path.join(cache, "ofa_prompt", "tsv-index", f"{name}.{digest}.npz")


def _header(version: tuple, key: str) -> str:
    return json.dumps({"format": FORMAT, "version": list(version), "key": key}, sort_keys=True)


def load(path: str, version: tuple, key: str) -> Optional[dict]:
    """The record of `path` made from `version` with check `key`: {"starts", "ends", "lines": array('q'),
    "skipped", "blank": int, "stats": dict}, or None."""
    want = _header(version, key)
    for candidate in record_paths(path):
        if not os.path.isfile(candidate):
            continue
        try:
            with np.load(candidate, allow_pickle=False) as saved:
                if str(saved["header"]) != want:
                    continue
                rows = {name: array("q", saved[name].astype(np.int64).tobytes())
                        for name in ("starts", "ends", "lines")}
                extra = json.loads(str(saved["extra"]))
        except (OSError, ValueError, KeyError) as e:
            logger.warning("%s: unreadable row index %s (%s): checking the file again", path, candidate, e)
            continue
        if not len(rows["starts"]) == len(rows["ends"]) == len(rows["lines"]):
            continue
        return {**rows, "skipped": int(extra["skipped"]), "blank": int(extra["blank"]), "stats": extra["stats"]}
    return None


def save(path: str, version: tuple, key: str, starts: array, ends: array, lines: array, skipped: int, blank: int,
         stats: dict) -> Optional[str]:
    """Write the record of `path` (the first place that can be written); returns where, or None."""
    arrays = {name: np.frombuffer(values, dtype=np.int64) for name, values in
              (("starts", starts), ("ends", ends), ("lines", lines))}
    extra = json.dumps({"skipped": skipped, "blank": blank, "stats": stats})
    problems = []
    for candidate in record_paths(path):
        try:
            with atomic_path(candidate, ".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, header=np.array(_header(version, key)), extra=np.array(extra), **arrays)
            return candidate
        except OSError as e:
            problems.append(f"{candidate}: {e.strerror or e}")
    logger.warning("%s: could not keep its row index (%s): the next run checks the file again", path,
                   "; ".join(problems))
    return None
