"""make_tsv's two errors: one for the whole input (it stops the command), one for a single record (it stops
the command too, unless --skip-bad-rows skips the record)."""


class MakeTsvError(ValueError):
    """An input that cannot become a TSV: the message names the file (and record, or option)."""


class BadRecord(ValueError):
    """What is wrong with one record (its file and line are added by the caller)."""
