"""Records -> checked TSV rows: each record's image embedded (its own bytes, or scaled down and re-encoded),
its fields as columns, and the row checked by the task's own check_row, the one fairseq-train runs at start-up."""
import base64
import functools
import io
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .columns import REQUIRED, id_field, no_breaks, row_columns
from .errors import BadRecord
from .records import Item

JPEG_QUALITY = 95


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


def embed_image(path: str, max_side: Optional[int]) -> Tuple[str, Tuple[float, float]]:
    """(base64 of the image as written, its size over the original's). The file's own bytes, unless
    `max_side` asks for a smaller image: then its longer side is scaled to max_side and it is re-encoded
    as JPEG (quality 95)."""
    from ..data.image import decode_image, image_size_of

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
        from ..data.image import BadImage

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
