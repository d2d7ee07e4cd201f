"""One record's fields as the text of OFA's TSV columns, in the column layouts of OFA's released files (LAYOUT):
texts without tab or line break, lists joined with OFA's &&, boxes as corners in the pixels of the image as
written, VQA answers in OFA's `conf|!+answer&&...`."""
from typing import List, Optional, Tuple

from .errors import BadRecord

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
    from ..tasks.refcoco import parse_box

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
    from ..metrics.vqa import parse_answers, vqa_accuracy

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
