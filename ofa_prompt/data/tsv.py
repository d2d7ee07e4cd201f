"""OFA's TSV files, read lazily: one pass at start-up records where each row starts and checks it;
rows are read on demand (every dataloader worker opens its own handle)."""
import logging
import os
from typing import Callable, List, Optional, Sequence

logger = logging.getLogger(__name__)


UTF8_BOM = b"\xef\xbb\xbf"


class BadRow(ValueError):
    pass


class TSVReader:
    """Rows of `path` as lists of the `selected_cols` columns, in that order.

    `check(columns)` validates a row's content (raise ValueError with the reason); a bad row is an
    error naming file and line, or, with skip_bad_rows, skipped and counted (`self.skipped`). Blank lines
    (an empty line, or spaces only) hold no row, so nothing is lost by passing over them: they are never an
    error, only counted (`self.blank`) and reported, as an editor's stray empty line should not stop a run."""

    def __init__(self, path: str, selected_cols: Sequence[int], check: Optional[Callable] = None,
                 skip_bad_rows: bool = False):
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder: --data names TSV files (comma-separated)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                raise ValueError(f"{path} is gzip-compressed: decompress it first (gunzip -k {path})")
        self.path, self.cols = path, list(selected_cols)
        self.offsets: List[int] = []
        self.lines: List[int] = []
        self.skipped = self.blank = 0
        self._file, self._pid = None, None
        with open(path, "rb") as f:
            offset = 0
            for line_no, raw in enumerate(f, 1):
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
                self.offsets.append(start)
                self.lines.append(line_no)
        if self.skipped or self.blank:
            logger.warning("%s: %d rows read; skipped %d bad rows and %d blank lines", path, len(self.offsets),
                           self.skipped, self.blank)
        if not self.offsets:
            raise BadRow(f"{path}: no usable rows")

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
        return len(self.offsets)

    def where(self, index: int) -> str:
        return f"{self.path}, line {self.lines[index]}"

    def __getitem__(self, index: int) -> List[str]:
        if self._file is None or self._pid != os.getpid():  # dataloader workers fork: own handle each
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        self._file.seek(self.offsets[index])
        return self.columns_of(self._file.readline())

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}
