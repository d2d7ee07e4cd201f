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
from .columns import LAYOUT, TASKS
from .errors import MakeTsvError
from .writer import Summary, make_tsv

__all__ = ["LAYOUT", "TASKS", "MakeTsvError", "Summary", "make_tsv"]
