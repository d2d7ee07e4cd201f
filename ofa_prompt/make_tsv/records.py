"""Annotation files -> records: JSONL, CSV and COCO-style JSON read into one dict of fields per record, each
with where it came from (file and line, or annotations[i]); a record that cannot be read comes as the
BadRecord saying why, for the caller to stop at or skip."""
import csv
import json
import os
from typing import Iterator, Tuple

from .columns import REQUIRED, coco_box
from .errors import BadRecord, MakeTsvError

FORMATS = ("jsonl", "csv", "coco")
COCO_TASKS = ("caption", "refcoco")
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
