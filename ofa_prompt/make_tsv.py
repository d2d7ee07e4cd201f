"""Write OFA-format TSV files from a folder of images and an annotation file, for the tasks caption, vqa_gen,
refcoco and snli_ve:

    python -m ofa_prompt.make_tsv TASK --images DIR --annotations FILE --out OUT.tsv [options]

The TSVs have the columns of OFA's released files, in their order (what OFA's run scripts read with their
--selected-cols, and what this plugin's tasks read by default):

    caption   uniq_id, image_id, caption (references joined by &&), objects, image
    vqa_gen   uniq_id, image_id, question, answers (conf|!+answer&&conf|!+answer), objects, image
    refcoco   uniq_id, image_id, text, box (x0,y0,x1,y1 in the image's pixels), image
    snli_ve   uniq_id, image_id, image, hypothesis, caption (the premise), label

`image` is the image file's own bytes in base64 (OFA's readers decode either alphabet; this writes the
standard one, as OFA's README does). `objects` (OFA's detected object labels, joined by &&) and snli_ve's
`caption` are empty unless the records give them, which OFA's readers accept (vqa_gen reads objects only
with --add-object). Every row is checked with the task's own row check (the one fairseq-train runs at
start-up: the image, non-empty text, the box inside the image, confidences in [0, 1], the label).

ANNOTATIONS: JSONL (.jsonl: one JSON object a line) or CSV (.csv: a header row naming the fields, then one
record a row), with these fields (extra fields are ignored):

    every task   image      the image file, relative to --images (required)
                 uniq_id    optional; default: the row's number in the TSV (0, 1, ...)
                 image_id   optional; default: the image file's name without its extension
    caption      caption    the caption; a JSONL list gives several references (a text joins them with &&)
                 objects    optional: object labels, a JSONL list or a text joined by &&
    vqa_gen      question   the question
                 answers    JSONL: {"answer": confidence, ...}, or a list of the annotators' answers (each
                            answer's confidence min(#annotators giving it / 3, 1), the VQA accuracy);
                            JSONL or CSV: OFA's text "conf|!+answer&&conf|!+answer", or one answer (confidence 1)
                 objects    optional, as for caption
    refcoco      text       the referring expression
                 box        x0,y0,x1,y1 (corners, pixels of the original image): a JSONL list or a text
    snli_ve      hypothesis the hypothesis
                 label      entailment, neutral or contradiction
                 caption    optional: the premise caption (OFA's --add-caption)

COCO-style JSON (.json) for caption and refcoco: {"images": [{"id", "file_name"}, ...], "annotations":
[{"image_id", ...}, ...]}, files found by file_name under --images, image_id the image's id, uniq_id the
annotation's id when it has one. caption: an annotation's "caption" (COCO's captions_*.json). refcoco: its
"bbox" [x, y, width, height] (COCO's convention, written as corners) and its referring expressions:
"sentences", a list of texts or of RefCOCO's {"sent": ...} objects (one row each, uniq_id <id>_<k> when an
annotation has several), or else "caption", one text.

A bad record is an error naming the annotation file and its line (COCO: annotations[i]); with
--skip-bad-rows it is skipped, logged and counted. The TSV is written whole or not at all."""
import argparse
import base64
import collections
import csv
import functools
import io
import json
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

logger = logging.getLogger("ofa_prompt.make_tsv")

# OFA's column layouts (its released TSVs; its run scripts' --selected-cols read from them)
LAYOUT = {
    "caption": ("uniq_id", "image_id", "caption", "objects", "image"),
    "vqa_gen": ("uniq_id", "image_id", "question", "answers", "objects", "image"),
    "refcoco": ("uniq_id", "image_id", "text", "box", "image"),
    "snli_ve": ("uniq_id", "image_id", "image", "hypothesis", "caption", "label"),
}
TASKS = tuple(LAYOUT)
REQUIRED = {"caption": ("image", "caption"), "vqa_gen": ("image", "question", "answers"),
            "refcoco": ("image", "text", "box"), "snli_ve": ("image", "hypothesis", "label")}
FORMATS = ("jsonl", "csv", "coco")
COCO_TASKS = ("caption", "refcoco")
JPEG_QUALITY = 95


class MakeTsvError(ValueError):
    """An input that cannot become a TSV: the message names the file (and record, or option)."""


class BadRecord(ValueError):
    """What is wrong with one record (its file and line are added by the caller)."""


# --- fields -> column text ----------------------------------------------------------------------------
def no_breaks(text: str) -> str:
    """Tabs and line breaks would split a TSV row: as whitespace they mean the same to OFA's text
    normalization, which collapses it."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def text_field(value, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRecord(f"field {name!r} must be a text, got {type(value).__name__} {value!r}")
    return no_breaks(str(value))


def id_field(value, name: str) -> Optional[str]:
    """An id as text, None when absent (or empty, as a CSV cell left blank)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRecord(f"field {name!r} must be a text or an integer, got {value!r}")
    text = str(value).strip()
    if not text or any(c in text for c in "\t\r\n"):
        raise BadRecord(f"field {name!r} {value!r} is empty or holds a tab or line break")
    return text


def joined_field(value, name: str) -> str:
    """A list of texts joined with OFA's && (a text is taken as already joined)."""
    if isinstance(value, list):
        items = [text_field(v, name) for v in value]
        if any("&&" in item for item in items):
            raise BadRecord(f"an item of {name!r} contains '&&', OFA's separator of items: {value!r}")
        return "&&".join(item.strip() for item in items)
    return text_field(value, name)


def format_number(value: float) -> str:
    """12.0 -> '12', 12.5 -> '12.5' (Python's shortest exact text of the float)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def box_corners(value) -> List[float]:
    """A box given as "x0,y0,x1,y1" or as a list of four numbers -> four floats (the task's own parser)."""
    from .tasks.refcoco import parse_box

    if isinstance(value, list):
        if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in value):
            raise BadRecord(f"box {value!r} is not four numbers x0,y0,x1,y1")
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise BadRecord(f"box {value!r} is not four numbers x0,y0,x1,y1")
    try:
        return parse_box(value)
    except ValueError as e:
        raise BadRecord(str(e)) from None


def coco_box(value) -> List[float]:
    """COCO's bbox [x, y, width, height] -> corners x0, y0, x1, y1."""
    if not isinstance(value, list) or len(value) != 4 or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise BadRecord(f"bbox {value!r} is not COCO's [x, y, width, height]")
    x, y, w, h = (float(v) for v in value)
    return [x, y, x + w, y + h]


def box_column(box: List[float], scale: Tuple[float, float] = (1.0, 1.0)) -> str:
    """The region column, in the pixels of the image as written (`scale`: its size over the original's)."""
    sx, sy = scale
    if (sx, sy) == (1.0, 1.0):
        return ",".join(format_number(v) for v in box)
    # a hundredth of a pixel: far below what the location bins resolve
    return ",".join(format_number(round(v * s, 2)) for v, s in zip(box, (sx, sy, sx, sy)))


def answers_column(value) -> str:
    """vqa_gen's answers in OFA's `conf|!+answer&&conf|!+answer`, from {answer: confidence}, a list of the
    annotators' answers, OFA's text, or one answer. Confidences are written as given: the task's check
    refuses those outside [0, 1]."""
    from .metrics.vqa import parse_answers, vqa_accuracy

    if isinstance(value, str) and "|!+" in value:
        try:
            pairs = list(parse_answers(value).items())
        except ValueError as e:
            raise BadRecord(str(e)) from None
    elif isinstance(value, str):
        pairs = [(value, 1.0)]
    elif isinstance(value, list):
        given = [text_field(a, "answers").strip() for a in value]
        pairs = [(a, vqa_accuracy(a, given)) for a in dict.fromkeys(given)]
    elif isinstance(value, dict):
        pairs = []
        for answer, conf in value.items():
            if isinstance(conf, bool) or not isinstance(conf, (int, float, str)):
                raise BadRecord(f"confidence {conf!r} of answer {answer!r} is not a number")
            pairs.append((answer, conf))
    else:
        raise BadRecord(f"answers {value!r}: expected {{answer: confidence}}, a list of answers or OFA's "
                        "'conf|!+answer&&...' text")
    if not pairs:
        raise BadRecord("no answers")
    items = []
    for answer, conf in pairs:
        answer = str(answer).strip()
        if any(s in answer for s in ("&&", "|!+", "\t", "\r", "\n")):
            raise BadRecord(f"answer {answer!r} contains '&&', '|!+' or a line break, which OFA's answers "
                            "column cannot hold")
        items.append(f"{float(conf) if not isinstance(conf, str) else conf}|!+{answer}")
    return "&&".join(items)


def row_columns(task: str, record: dict, uniq_id: str, image_id: str, image: str,
                scale: Tuple[float, float]) -> List[str]:
    """The TSV columns of one record, in LAYOUT order."""
    if task == "caption":
        return [uniq_id, image_id, joined_field(record["caption"], "caption"),
                joined_field(record.get("objects"), "objects"), image]
    if task == "vqa_gen":
        return [uniq_id, image_id, text_field(record["question"], "question"), answers_column(record["answers"]),
                joined_field(record.get("objects"), "objects"), image]
    if task == "refcoco":
        return [uniq_id, image_id, text_field(record["text"], "text"), box_column(box_corners(record["box"]), scale),
                image]
    return [uniq_id, image_id, image, text_field(record["hypothesis"], "hypothesis"),
            text_field(record.get("caption"), "caption"), text_field(record["label"], "label").strip()]


# --- the task's own row check ---------------------------------------------------------------------------
def row_checker(task: str) -> Callable[[List[str]], None]:
    """The task's check_row (what fairseq-train runs on every row of a TSV at start-up) for a row in the full
    LAYOUT, with the columns the task reads by default. check_row looks at a row's content only, so the task
    is made without its dictionary and BPE files; the state its __init__ would set for it is set empty (no
    SCST counting, no answer set to measure coverage against)."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    cls = TASK_REGISTRY[task]
    checker = cls.__new__(cls)
    checker.cfg = TASK_DATACLASS_REGISTRY[task]()
    checker._counting, checker._answer_set, checker._coverage = None, set(), []
    cols = [int(c) for c in cls.default_cols.split(",")]
    return lambda row: checker.check_row([row[c] for c in cols])


# --- images ---------------------------------------------------------------------------------------------
def embed_image(path: str, max_side: Optional[int]) -> Tuple[str, Tuple[float, float]]:
    """(base64 of the image as written, its size over the original's). The file's own bytes, unless
    `max_side` asks for a smaller image: then its longer side is scaled to max_side and it is re-encoded
    as JPEG (quality 95)."""
    from .data.image import decode_image, image_size_of

    with open(path, "rb") as f:
        b64 = base64.b64encode(f.read()).decode("ascii")
    if not max_side:
        return b64, (1.0, 1.0)
    w, h = image_size_of(b64)
    if max(w, h) <= max_side:
        return b64, (1.0, 1.0)
    from PIL import Image

    ratio = max_side / max(w, h)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    buf = io.BytesIO()
    decode_image(b64).resize(size, Image.LANCZOS).save(buf, "JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buf.getvalue()).decode("ascii"), (size[0] / w, size[1] / h)


# --- annotation files -> records ----------------------------------------------------------------------
Item = Tuple[str, object]  # (where: file and record, a record dict or the BadRecord that reading it raised)


def guess_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    guessed = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "coco"}.get(ext)
    if guessed is None:
        raise MakeTsvError(f"--annotations {path}: cannot tell the format from the extension {ext!r}: "
                           f"name it .jsonl, .csv or .json (COCO-style), or pass --format ({', '.join(FORMATS)})")
    return guessed


def jsonl_records(path: str) -> Iterator[Item]:
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            where = f"{path}, line {line_no}"
            if not line.strip():  # a stray empty line holds no record
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, BadRecord(f"not a JSON object ({e.msg} at column {e.colno})")
                continue
            yield where, record if isinstance(record, dict) else BadRecord(
                f"a JSON {type(record).__name__}, not an object of fields")


def csv_records(path: str, task: str) -> Iterator[Item]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [name for name in REQUIRED[task] if name not in header]
        if missing:
            raise MakeTsvError(f"{path}: the header row {','.join(header) or '(none)'} lacks the field(s) "
                               f"{', '.join(missing)} that {task} needs (first line: the field names)")
        for record in reader:
            where = f"{path}, line {reader.line_num}"
            if None in record:  # cells beyond the header's
                yield where, BadRecord(f"{len(header) + len(record[None])} cells, the header names {len(header)}")
            elif None in record.values():
                yield where, BadRecord(f"{sum(v is not None for v in record.values())} cells, the header names "
                                       f"{len(header)}")
            else:
                yield where, record


def coco_records(path: str, task: str) -> Iterator[Item]:
    """COCO-style JSON -> records (image: the file_name, image_id: the image's id)."""
    if task not in COCO_TASKS:
        raise MakeTsvError(f"--annotations {path}: COCO-style JSON is read for {' and '.join(COCO_TASKS)}; "
                           f"give {task} records as JSONL or CSV (--format jsonl / csv)")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise MakeTsvError(f"{path}: not JSON ({e}); for one JSON record a line use .jsonl or --format jsonl") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise MakeTsvError(f"{path}: not COCO-style JSON (an object with the lists 'images' and 'annotations'); "
                           "for one JSON record a line use .jsonl or --format jsonl")
    images = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise MakeTsvError(f"{path}, images[{i}]: an image needs an 'id' and a 'file_name'")
        images[image["id"]] = image
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}, annotations[{i}]"
        if not isinstance(ann, dict):
            yield where, BadRecord("an annotation must be an object")
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            yield where, BadRecord(f"image_id {ann.get('image_id')!r} is not the id of one of the file's images")
            continue
        base = {"image": image["file_name"], "image_id": image["id"]}
        if task == "caption":
            if "caption" not in ann:
                yield where, BadRecord("no 'caption'")
            else:
                yield where, {**base, "uniq_id": ann.get("id"), "caption": ann["caption"]}
            continue
        try:
            box = coco_box(ann.get("bbox"))
            texts = referring_expressions(ann)
        except BadRecord as e:
            yield where, e
            continue
        for k, text in enumerate(texts):
            uniq_id = ann.get("id")
            if uniq_id is not None and len(texts) > 1:
                uniq_id = f"{uniq_id}_{k}"
            yield (where if len(texts) == 1 else f"{where} sentence {k}"), \
                {**base, "uniq_id": uniq_id, "text": text, "box": box}


def referring_expressions(ann: dict) -> list:
    """An annotation's referring expressions: "sentences" (texts, or RefCOCO's {"sent": ...}) or "caption"."""
    if "sentences" in ann:
        sentences = ann["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise BadRecord("'sentences' must be a non-empty list")
        return [s.get("sent", s.get("raw")) if isinstance(s, dict) else s for s in sentences]
    if "caption" in ann:
        return [ann["caption"]]
    raise BadRecord("no referring expression: give 'sentences' (a list) or 'caption'")


def read_records(path: str, fmt: str, task: str) -> Iterator[Item]:
    if fmt == "jsonl":
        return jsonl_records(path)
    if fmt == "csv":
        return csv_records(path, task)
    return coco_records(path, task)


# --- records -> rows -------------------------------------------------------------------------------------
@dataclass
class Summary:
    rows: int = 0
    skipped: int = 0
    answers: int = 0  # vqa_gen with --ans2label: the answers written there


class RowMaker:
    """Records -> checked TSV rows, for one task and image folder."""

    def __init__(self, task: str, images: str, max_side: Optional[int]):
        self.task, self.images, self.max_side = task, images, max_side
        self.check = row_checker(task)
        # questions and expressions come several to an image, usually in a run; a cache of one run only, so
        # that images changed between runs are read anew
        self.embed = functools.lru_cache(maxsize=32)(embed_image)

    def image_path(self, record: dict) -> str:
        name = record.get("image")
        if not isinstance(name, str) or not name.strip():
            raise BadRecord(f"field 'image' (the image file under --images) must be a file name, got {name!r}")
        return os.path.join(self.images, name)

    def row(self, record: dict, uniq_id: str) -> List[str]:
        from .data.image import BadImage

        missing = [name for name in REQUIRED[self.task] if name not in record]
        if missing:
            raise BadRecord(f"no field {', '.join(map(repr, missing))} (the record has: {', '.join(record) or 'none'})")
        path = self.image_path(record)
        if not os.path.isfile(path):
            raise BadRecord(f"image file not found: {path}")
        try:
            image, scale = self.embed(path, self.max_side)
        except BadImage as e:
            raise BadRecord(f"image file {path}: {e}") from None
        image_id = id_field(record.get("image_id"), "image_id") or \
            no_breaks(os.path.splitext(os.path.basename(record["image"]))[0])
        row = row_columns(self.task, record, uniq_id, image_id, image, scale)
        try:
            self.check(row)
        except BadImage as e:
            raise BadRecord(f"image file {path}: {e}") from None
        except ValueError as e:
            raise BadRecord(str(e)) from None
        return row


def caption_groups(items: Iterable[Item]) -> List[List[Item]]:
    """--join-captions: the records of one image file together, in the order of their first record (a
    record that could not be read stays alone, to be reported)."""
    groups: Dict[object, List[Item]] = {}
    for n, (where, record) in enumerate(items):
        key = record.get("image") if isinstance(record, dict) else None
        groups.setdefault(("image", key) if isinstance(key, str) else ("record", n), []).append((where, record))
    return list(groups.values())


def make_tsv(task: str, images: str, annotations: str, out: str, fmt: Optional[str] = None,
             skip_bad_rows: bool = False, ans2label: Optional[str] = None, max_side: Optional[int] = None,
             join_captions: bool = False, log_every: int = 10000) -> Summary:
    """Write `out` (and, for vqa_gen, `ans2label`) from the records of `annotations`; see the module's doc."""
    from .atomic_file import atomic_path
    from .metrics.vqa import parse_answers

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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ofa_prompt.make_tsv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=TASKS, help="the task whose TSV layout to write")
    parser.add_argument("--images", required=True, help="folder of the image files the records name")
    parser.add_argument("--annotations", required=True, help="JSONL, CSV or COCO-style JSON records (fields above)")
    parser.add_argument("--out", required=True, help="the TSV file to write")
    parser.add_argument("--format", choices=FORMATS, help="the annotations' format (default: from the extension: "
                                                          ".jsonl, .csv, .json for COCO-style)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip (log and count) bad records instead of stopping at the first")
    parser.add_argument("--ans2label", metavar="OUT.pkl",
                        help="vqa_gen: also write the answers of the written rows as OFA's trainval_ans2label.pkl "
                             "(a pickled {answer: index}, most frequent first), for --ans2label-file")
    parser.add_argument("--max-side", type=int, metavar="N",
                        help="scale images whose longer side exceeds N pixels down to N, re-encoded as JPEG "
                             "(quality 95; refcoco boxes scaled with them); others keep their own bytes")
    parser.add_argument("--join-captions", action="store_true",
                        help="caption: one row an image, its captions joined with && (as OFA's caption "
                             "evaluation files), uniq_id the image_id")
    parser.add_argument("--log-every", type=int, default=10000, metavar="N", help="log progress every N rows")
    args = parser.parse_args(argv)
    from . import load
    load()  # the tasks' row checks: `python -m ofa_prompt.make_tsv` imports the package without the plugin
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        force=True)
    try:
        summary = make_tsv(args.task, args.images, args.annotations, args.out, args.format, args.skip_bad_rows,
                           args.ans2label, args.max_side, args.join_captions, args.log_every)
    except (MakeTsvError, OSError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(f"wrote {summary.rows} rows to {args.out}" + (f", skipped {summary.skipped} bad records"
                                                        if summary.skipped else "")
          + (f"; {summary.answers} answers to {args.ans2label}" if args.ans2label else ""))


if __name__ == "__main__":
    main()
