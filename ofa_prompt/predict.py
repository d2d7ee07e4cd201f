"""One-off use of a tuned model from the command line: one line per image (JSON lines with --json).

    python -m ofa_prompt.predict --backbone ofa_base.pt --prompts caption.safetensors --bpe-dir BPE img.jpg ...
    python -m ofa_prompt.predict --backbone ofa_base.pt --prompts vqa.safetensors --bpe-dir BPE \\
        --question "what color is the circle?" img.jpg
    python -m ofa_prompt.predict ... --ground "the blue square" img.jpg      # a box in the image's pixels
    python -m ofa_prompt.predict ... --entail "there is a circle" img.jpg    # yes / no / maybe

The task is the prompt file's (or --task); everything else is ofa_prompt.predictor's.
"""
import argparse
import json
import sys

from .errors import InputError

ACTIONS = {"caption": "caption", "vqa_gen": "answer", "refcoco": "ground", "snli_ve": "entail"}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m ofa_prompt.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--backbone", required=True, help="an OFA checkpoint (official, or one of this plugin's)")
    p.add_argument("--prompts", help="a prompt file (python -m ofa_prompt.prompt_file export)")
    p.add_argument("--bpe-dir", help="the folder of OFA's dict.txt, encoder.json and vocab.bpe")
    p.add_argument("--task", choices=sorted(ACTIONS), help="default: the prompt file's, else from the question")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--question", help="vqa_gen: the question asked of every image")
    what.add_argument("--ground", metavar="TEXT", help="refcoco: the expression to find in every image")
    what.add_argument("--entail", metavar="HYPOTHESIS", help="snli_ve: the hypothesis to test on every image")
    p.add_argument("--premise", help="snli_ve with prompts tuned with --add-caption: the premise of every image")
    p.add_argument("--candidates", help="vqa_gen: a JSON list of candidate answers (default: open-ended)")
    p.add_argument("--beam", type=int, help="the beam size (default: the prompt file's recorded decoding, else 5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="JSON lines: {image, task, output}")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], type=option,
                   help="a task option, as in fairseq's (patch_image_size=480, text_tokenizer=word); repeatable")
    return p.parse_args(argv)


def option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value  # a plain string


def task_of(args, recorded):
    given = {"vqa_gen": args.question, "refcoco": args.ground, "snli_ve": args.entail}
    asked = [t for t, v in given.items() if v is not None]
    task = args.task or (asked[0] if asked else recorded or "caption")
    flags = {"vqa_gen": "--question", "refcoco": "--ground", "snli_ve": "--entail"}
    if task != "caption" and given[task] is None:
        raise InputError(f"--task {task} needs {flags[task]}")
    for other in asked:
        if other != task:
            raise InputError(f"{flags[other]} is for --task {other}, not {task}")
    for flag, value, wanted in (("--candidates", args.candidates, "vqa_gen"), ("--premise", args.premise, "snli_ve")):
        if value is not None and task != wanted:
            raise InputError(f"{flag} is for --task {wanted}, not {task}")
    return task


def candidates_of(text):
    """--candidates: a JSON list of answers (None: open-ended)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--candidates {text!r} is not JSON ({e}): give a list like '[\"red\", \"blue\"]'") from None


def main(argv=None):
    args = parse(argv)  # None: argparse reads the command line
    from . import load
    load(command_line=True)  # the plugin (fairseq: seconds), once the arguments are read
    from .predictor import from_pretrained
    try:
        model = from_pretrained(args.backbone, prompts=args.prompts, bpe_dir=args.bpe_dir, device=args.device,
                                batch_size=args.batch_size, **dict(args.set))
        task = task_of(args, model.trained_for)
        images = list(args.images)
        generation = {} if args.beam is None else {"beam": args.beam}  # given: it applies (or is refused)
        if task == "caption":
            outputs = model.caption(images, **generation)
        elif task == "vqa_gen":
            outputs = model.answer(images, args.question, candidates=candidates_of(args.candidates), **generation)
        elif task == "refcoco":
            outputs = model.ground(images, args.ground, **generation)
        else:
            outputs = model.entail(images, args.entail, premise=args.premise, **generation)
    except (InputError, ValueError, FileNotFoundError) as e:
        sys.exit(f"python -m ofa_prompt.predict: error: {e}")
    for image, output in zip(images, outputs):
        if args.json:
            print(json.dumps({"image": image, "task": task, "output": output}))
        else:
            shown = " ".join(f"{v:.1f}" for v in output) if isinstance(output, list) else output
            print(f"{image}\t{shown}")


if __name__ == "__main__":
    main()
