"""OFA's TSV files, read lazily: one pass at start-up records where each row starts and checks it (or an
earlier run's record of that pass is used: row_index); rows are read on demand, from the file checked."""
import json
import logging
import os
from array import array
from typing import Callable, List, Optional, Sequence

from ..errors import InputError
from ..file_version import check_unchanged, file_version
from . import row_index

logger = logging.getLogger(__name__)


UTF8_BOM = b"\xef\xbb\xbf"


class BadRow(InputError, ValueError):
    """A row that cannot be used, named by file and line."""


class TSVReader:
    """Rows of `path` as lists of the `selected_cols` columns, in that order.

    `check(columns)` validates a row's content (raise ValueError with the reason); a bad row is an
    error naming file and line, or, with skip_bad_rows, skipped and counted (`self.skipped`). Blank lines
    (an empty line, or spaces only) hold no row, so nothing is lost by passing over them: they are never an
    error, only counted (`self.blank`) and reported, as an editor's stray empty line should not stop a run.

    Rows are read with pread from the handle the check used, so a file replaced on disk during a run (a
    new version written and renamed over it) is not read: the run keeps reading the rows it checked. A file
    changed in place (same inode, another size or time) is an error naming it, never rows of two versions."""

    def __init__(self, path: str, selected_cols: Sequence[int], check: Optional[Callable] = None,
                 skip_bad_rows: bool = False, index_key: Optional[str] = None, stats: Optional[dict] = None):
        """`index_key`: keep a record of the check (ofa_prompt.data.row_index) under this description of it,
        and use the record instead of checking where one of this file version and key exists. `stats`: a
        dict that `check` fills (counts over the rows), kept in the record and filled from it."""
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder: --data names TSV files (comma-separated)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        self.path, self.cols = path, list(selected_cols)
        # byte ranges and line numbers of the usable rows: arrays, 8 bytes a row (VQAv2 has ~0.66 M rows)
        self.starts, self.ends, self.lines = array("q"), array("q"), array("q")
        self.skipped = self.blank = 0
        self._file = open(path, "rb")
        self._version = file_version(self._file.fileno())
        self.from_index = False  # whether the rows came from a record of an earlier check
        try:
            if index_key is not None:  # what the outcome of the check depends on besides the caller's key
                index_key = json.dumps([index_key, self.cols, skip_bad_rows])
            record = row_index.load(path, self._version, index_key) if index_key is not None else None
            if record is not None:
                self.starts, self.ends, self.lines = record["starts"], record["ends"], record["lines"]
                self.skipped, self.blank, self.from_index = record["skipped"], record["blank"], True
                if stats is not None:
                    stats.update(record["stats"])
                logger.info("%s: %d rows, checked by an earlier run of this file version (its row index)", path,
                            len(self.starts))
            else:
                self._scan(check, skip_bad_rows)
            self._report()
            if record is None and index_key is not None:
                row_index.save(path, self._version, index_key, self.starts, self.ends, self.lines, self.skipped,
                               self.blank, stats or {})
        except BaseException:
            self._file.close()
            raise

    def _scan(self, check, skip_bad_rows):
        path = self.path
        if self._file.read(2) == b"\x1f\x8b":
            raise ValueError(f"{path} is gzip-compressed: decompress it first (gunzip -k {path})")
        self._file.seek(0)
        offset = 0
        for line_no, raw in enumerate(self._file, 1):
            start, offset = offset, offset + len(raw)
            if line_no == 1 and raw.startswith(UTF8_BOM):  # as some editors write: not part of the id
                start, raw = start + len(UTF8_BOM), raw[len(UTF8_BOM):]
            if not raw.strip(b" \r\n"):
                self.blank += 1
                continue
            try:
                columns = self.columns_of(raw)
                if check is not None:
                    check(columns)
            except ValueError as e:
                where = f"{path}, line {line_no}"
                if not skip_bad_rows:
                    raise BadRow(f"{where}: {e} (pass --skip-bad-rows to skip such rows)") from None
                self.skipped += 1
                logger.warning("skipping %s: %s", where, e)
                continue
            self.starts.append(start)
            self.ends.append(offset)
            self.lines.append(line_no)
        self._check_unchanged("while it was being checked at start-up")

    def _report(self):
        if self.skipped or self.blank:
            logger.warning("%s: %d rows read; skipped %d bad rows and %d blank lines", self.path, len(self.starts),
                           self.skipped, self.blank)
        if not self.starts:
            raise BadRow(f"{self.path}: no usable rows")

    def columns_of(self, raw: bytes) -> List[str]:
        """The selected columns of a line. A row needs only the columns the task reads: counting from the
        file's first row would let one bad first row fail every good one; a stray tab inside a read column
        shifts the others, which the task's content check then mostly refuses."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:  # e.g. a file cut in the middle of a multi-byte character
            raise ValueError(f"not UTF-8 text (byte {e.start} of the line: {e.reason})") from None
        parts = text.rstrip("\r\n").split("\t")
        need = max(self.cols) + 1
        if len(parts) < need:
            raise BadRow(f"{len(parts)} columns, expected {need} or more "
                         f"(--selected-cols {','.join(map(str, self.cols))})")
        return [parts[c] for c in self.cols]

    def __len__(self):
        return len(self.starts)

    def where(self, index: int) -> str:
        return f"{self.path}, line {self.lines[index]}"

    def __getitem__(self, index: int) -> List[str]:
        if self._file is None:
            # a spawned dataloader worker has none (forked ones share the inherited handle: pread moves no file
            # position, so they do not disturb each other); a new handle must be on the file that was checked
            self._file = open(self.path, "rb")
        self._check_unchanged("after it was checked at start-up: its rows are no longer the rows checked")
        start = self.starts[index]
        return self.columns_of(os.pread(self._file.fileno(), self.ends[index] - start, start))

    def _check_unchanged(self, when: str):
        check_unchanged(self.path, self._version, file_version(self._file.fileno()), when)

    def __getstate__(self):  # handles do not travel to spawned workers
        return {**self.__dict__, "_file": None}
