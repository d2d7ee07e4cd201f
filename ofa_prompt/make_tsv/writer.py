"""make_tsv(): the records of an annotation file written as one task's TSV (and, for vqa_gen, its answer
list), whole or not at all; bad records stop it or, with skip_bad_rows, are skipped and counted."""
import collections
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Dict, Optional

from .columns import TASKS, id_field
from .errors import BadRecord, MakeTsvError
from .records import FORMATS, guess_format, read_records
from .rows import RowMaker, caption_groups

logger = logging.getLogger(__package__)  # the tool's one logger, "ofa_prompt.make_tsv"


@dataclass
class Summary:
    rows: int = 0
    skipped: int = 0
    answers: int = 0  # vqa_gen with --ans2label: the answers written there


def make_tsv(task: str, images: str, annotations: str, out: str, fmt: Optional[str] = None,
             skip_bad_rows: bool = False, ans2label: Optional[str] = None, max_side: Optional[int] = None,
             join_captions: bool = False, log_every: int = 10000) -> Summary:
    """Write `out` (and, for vqa_gen, `ans2label`) from the records of `annotations`; see the module's doc."""
    from ..atomic_file import atomic_path
    from ..metrics.vqa import parse_answers

    check_options(task, images, annotations, fmt, ans2label, max_side, join_captions, log_every)
    fmt = fmt or guess_format(annotations)
    items = read_records(annotations, fmt, task)
    groups = caption_groups(items) if join_captions else ([item] for item in items)
    maker = RowMaker(task, images, max_side)
    summary = Summary()
    answer_rows = collections.Counter()  # answer -> rows giving it, in the order of first appearance
    ids: Dict[str, str] = {}  # uniq_id -> where its row came from

    def bad(where, problem):
        if not skip_bad_rows:
            raise MakeTsvError(f"{where}: {problem} (pass --skip-bad-rows to skip such records)")
        summary.skipped += 1
        logger.warning("skipping %s: %s", where, problem)

    with atomic_path(out, ".tsv") as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for group in groups:
            rows = []
            for where, record in group:
                try:
                    if isinstance(record, Exception):
                        raise record
                    uniq_id = id_field(record.get("uniq_id"), "uniq_id") or str(summary.rows)
                    rows.append((where, maker.row(record, uniq_id)))
                except BadRecord as e:
                    bad(where, e)
            if not rows:
                continue
            where, row = rows[0]
            if join_captions:
                # one row an image (OFA's caption evaluation files): its id for both ids, every reference
                row = [row[1], row[1], "&&".join(r[2] for _, r in rows), *row[3:]]
                try:
                    maker.check(row)
                except ValueError as e:
                    bad(where, e)
                    continue
            if row[0] in ids:
                bad(where, f"uniq_id {row[0]!r} is already the id of the row from {ids[row[0]]}")
                continue
            ids[row[0]] = where
            if task == "vqa_gen":
                answer_rows.update(parse_answers(row[3]).keys())
            f.write("\t".join(row) + "\n")
            summary.rows += 1
            if summary.rows % log_every == 0:
                logger.info("%d rows written (%d records skipped), the last from %s", summary.rows,
                            summary.skipped, where)
        if not summary.rows:
            raise MakeTsvError(f"{annotations}: no usable records (skipped {summary.skipped}): "
                               f"nothing written to {out}")
        f.flush()
        os.fsync(f.fileno())
        if ans2label:  # last, so that a failure before leaves neither file
            # most frequent first (ties: first given); OFA's trainval_ans2label.pkl is {answer: label index}
            order = sorted(answer_rows, key=lambda a: -answer_rows[a])
            with atomic_path(ans2label, ".pkl") as tmp_pkl:
                with open(tmp_pkl, "wb") as p:
                    pickle.dump({a: i for i, a in enumerate(order)}, p)
            summary.answers = len(order)
    logger.info("wrote %d rows to %s%s", summary.rows, out,
                f" (skipped {summary.skipped} bad records)" if summary.skipped else "")
    return summary


def check_options(task, images, annotations, fmt, ans2label, max_side, join_captions, log_every):
    if task not in TASKS:
        raise MakeTsvError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    if fmt is not None and fmt not in FORMATS:
        raise MakeTsvError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not os.path.isdir(images):
        raise MakeTsvError(f"--images {images}: not a folder")
    if not os.path.isfile(annotations):
        raise MakeTsvError(f"--annotations {annotations}: file not found")
    if ans2label and task != "vqa_gen":
        raise MakeTsvError(f"--ans2label writes vqa_gen's candidate answers; {task} has none: drop it")
    if join_captions and task != "caption":
        raise MakeTsvError(f"--join-captions joins the captions of an image; {task} has none: drop it")
    if max_side is not None and max_side < 1:
        raise MakeTsvError(f"--max-side {max_side}: must be a positive number of pixels")
    if log_every < 1:
        raise MakeTsvError(f"--log-every {log_every}: must be at least 1")
