"""Writes the synthetic benchmark: OFA-format TSVs for caption, vqa_gen, refcoco and snli_ve, for a
pretraining mix and a downstream stage, plus the word dictionary (`dict.txt`, fairseq format).

Files, all in one folder (pass it as --bpe-dir with --text-tokenizer word):
  {stage}_{task}_{split}.tsv   stage: pretrain | downstream, split: train | valid | test
  dict.txt                     every word, fairseq's "word count" format
  vqa_answers.txt              every VQA answer, one per line (vqa_gen's --ans2label-file)

The stages differ in phrasing (see language.py) and in attribute combinations: the combinations in
HELD_OUT never appear in pretraining images. Same seed, same bytes.
"""
import argparse
import collections
import os
import random
import re
from typing import Dict, List

from . import language
from .scene import all_combos, render, sample_scene, to_base64

TASKS = ("caption", "vqa", "refcoco", "snli_ve")
SPLITS = ("train", "valid", "test")
HELD_OUT = (("green", "triangle"), ("yellow", "circle"))
DEFAULT_IMAGES = {
    "pretrain": {"train": 2000, "valid": 100, "test": 100},
    "downstream": {"train": 400, "valid": 100, "test": 200},
}
SNLI_LABELS = ("entailment", "neutral", "contradiction")
# The tasks' instructions (OFA's wording) go through the same word tokenizer: their words must be in dict.txt.
INSTRUCTIONS = (
    " what does the image describe?",
    ' which region does the text " x " describe?',
    ' does the image describe " x "?',
    ' can image and text1 " x " imply text2 " x "?',
    " object: x",  # vqa_gen --add-object
)


def tsv_line(columns) -> str:
    for c in columns:
        if "\t" in str(c) or "\n" in str(c):
            raise ValueError(f"a TSV column may not contain tabs or newlines: {c!r}")
    return "\t".join(str(c) for c in columns) + "\n"


def split_rows(stage: str, split: str, n_images: int, seed: int) -> Dict[str, List[str]]:
    """All four tasks' rows for one stage and split (each image is used by every task)."""
    rng = random.Random(f"{seed}-{stage}-{split}")  # str seeds hash the same in every process
    combos = [c for c in all_combos() if stage != "pretrain" or c not in HELD_OUT]
    train = split == "train"
    rows = {task: [] for task in TASKS}
    uid = collections.Counter()

    def add(task, *columns):
        rows[task].append(tsv_line([uid[task], *columns]))
        uid[task] += 1

    for image_id in range(n_images):
        scene = sample_scene(rng, combos)
        image = to_base64(render(scene))
        objects = "&&".join(sorted({s.shape for s in scene}))
        refs = language.captions(scene, stage)
        # OFA: one caption per training row, all references of the image joined by && for evaluation
        for caption in (refs if train else ["&&".join(refs)]):
            add("caption", image_id, caption, objects, image)
        families = language.questions(scene, stage, rng)
        for question, truth, wrong in (families if train else [rng.choice(families)]):
            answers = language.format_answers(language.annotator_answers(truth, wrong, rng))
            add("vqa", image_id, question, answers, objects, image)
        for shape in (scene if train else [rng.choice(scene)]):
            expression = language.referring_expression(shape, stage, rng)
            add("refcoco", image_id, expression, ",".join(map(str, shape.box)), image)
        premise = refs[0]
        for label in (SNLI_LABELS if train else [rng.choice(SNLI_LABELS)]):
            add("snli_ve", image_id, image, language.hypothesis(scene, stage, label, rng), premise, label)
    return rows


def words(text: str) -> List[str]:
    """Tokens as a word-level tokenizer may see them: whitespace-split, and with punctuation split off."""
    lowered = text.lower()
    return lowered.split() + re.findall(r"[a-z0-9]+|[^\sa-z0-9]", lowered)


def text_columns(task: str, line: str) -> List[str]:
    cols = line.rstrip("\n").split("\t")
    if task == "caption":
        return cols[2].split("&&") + cols[3].split("&&")
    if task == "vqa":
        return [cols[2]] + [a.split("|!+", 1)[1] for a in cols[3].split("&&")] + cols[4].split("&&")
    if task == "refcoco":
        return [cols[2]]
    return [cols[3], cols[4], cols[5], "yes no maybe"]


def write_dictionary(path: str, counts: collections.Counter):
    with open(path, "w", encoding="utf-8") as f:
        for word, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            f.write(f"{word} {n}\n")


def generate(out_dir: str, seed: int = 0, scale: float = 1.0) -> Dict[str, str]:
    """Writes every file; returns {file name: path}. `scale` multiplies the image counts."""
    os.makedirs(out_dir, exist_ok=True)
    counts = collections.Counter(w for text in INSTRUCTIONS for w in words(text) if w != "x")
    answers = set()
    written = {}
    for stage, sizes in DEFAULT_IMAGES.items():
        for split, n in sizes.items():
            rows = split_rows(stage, split, max(1, round(n * scale)), seed)
            for task, lines in rows.items():
                name = f"{stage}_{task}_{split}.tsv"
                with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                    f.writelines(lines)
                written[name] = os.path.join(out_dir, name)
                for line in lines:
                    for text in text_columns(task, line):
                        counts.update(words(text))
                    if task == "vqa":
                        answers.update(a.split("|!+", 1)[1] for a in line.split("\t")[3].split("&&"))
    written["dict.txt"] = os.path.join(out_dir, "dict.txt")
    write_dictionary(written["dict.txt"], counts)
    written["vqa_answers.txt"] = os.path.join(out_dir, "vqa_answers.txt")
    with open(written["vqa_answers.txt"], "w", encoding="utf-8") as f:
        f.writelines(f"{a}\n" for a in sorted(answers))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ofa_prompt.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of images of every split")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    written = generate(args.out, args.seed, args.scale)
    print(f"wrote {len(written)} files to {args.out}")
