"""python -m ofa_prompt.make_tsv: the command line of make_tsv() (the package's docstring is its --help)."""
import argparse
import logging

from . import __doc__ as HELP
from .columns import TASKS
from .errors import MakeTsvError
from .records import FORMATS
from .writer import make_tsv


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ofa_prompt.make_tsv", description=HELP,
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
    from .. import load
    load(command_line=True)  # the tasks' row checks (importing the package loads nothing)
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
