"""OFA's TSV files, read lazily: one pass at start-up records where each row starts and checks it;
rows are read on demand (every dataloader worker opens its own handle)."""
import logging
import os
from typing import Callable, List, Optional, Sequence

logger = logging.getLogger(__name__)


class BadRow(ValueError):
    pass


class TSVReader:
    """Rows of `path` as lists of the `selected_cols` columns, in that order.

    `check(columns, where)` validates a row's content (raise ValueError with the reason); a bad row is an
    error naming file and line, or, with skip_bad_rows, skipped and counted (`self.skipped`)."""

    def __init__(self, path: str, selected_cols: Sequence[int], check: Optional[Callable] = None,
                 skip_bad_rows: bool = False):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        self.path, self.cols = path, list(selected_cols)
        self.offsets: List[int] = []
        self.lines: List[int] = []
        self.skipped = 0
        self._file, self._pid = None, None
        need = max(self.cols) + 1
        n_columns = None
        with open(path, "rb") as f:
            offset = 0
            for line_no, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                parts = raw.decode("utf-8").rstrip("\r\n").split("\t")
                n_columns = n_columns or len(parts)
                where = f"{path}, line {line_no}"
                try:
                    if len(parts) != n_columns or len(parts) < need:
                        raise BadRow(f"{len(parts)} columns, expected {max(n_columns, need)} "
                                     f"(--selected-cols {','.join(map(str, self.cols))})")
                    if check is not None:
                        check([parts[c] for c in self.cols])
                except ValueError as e:
                    if not skip_bad_rows:
                        raise BadRow(f"{where}: {e} (pass --skip-bad-rows to skip such rows)") from None
                    self.skipped += 1
                    logger.warning("skipping %s: %s", where, e)
                    continue
                self.offsets.append(start)
                self.lines.append(line_no)
        if self.skipped:
            logger.warning("%s: skipped %d bad rows of %d", path, self.skipped, self.skipped + len(self.offsets))
        if not self.offsets:
            raise BadRow(f"{path}: no usable rows")

    def __len__(self):
        return len(self.offsets)

    def where(self, index: int) -> str:
        return f"{self.path}, line {self.lines[index]}"

    def __getitem__(self, index: int) -> List[str]:
        if self._file is None or self._pid != os.getpid():  # dataloader workers fork: own handle each
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        self._file.seek(self.offsets[index])
        parts = self._file.readline().decode("utf-8").rstrip("\r\n").split("\t")
        return [parts[c] for c in self.cols]

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}
