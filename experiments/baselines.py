"""Each task's trivial baseline, the floor every table and plot measures from: what a model that never looks at
the image scores.

* caption: the most common training caption, the same for every image (CIDEr);
* refcoco: one fixed box for every expression, the box (among the training boxes and their coordinate-wise
  median) that is right most often on the training split (Acc@0.5);
* vqa: the question alone: the most common training answer of the same question string, else of all questions
  (VQA accuracy);
* snli_ve: the majority training class (accuracy).

Scored with the project's own metrics on the synthetic benchmark's splits ($DEMO_DATA/downstream_<task>_*.tsv).

    python experiments/baselines.py [--quick]   # prints each task's baseline on the validation and test splits
"""
import argparse
import functools
import os
import statistics
from collections import Counter
from typing import Callable, Dict, List

from common import REPO, TASKS, _demo
from ofa_prompt.metrics.caption import caption_scores
from ofa_prompt.metrics.grounding import acc_at_iou
from ofa_prompt.metrics.vqa import parse_answers, vqa_score
from ofa_prompt.tasks.caption import references


def read_rows(path: str, task: str) -> List[List[str]]:
    """The task's selected columns (TASKS[task]['cols']) of every row of a TSV."""
    cols = [int(c) for c in TASKS[task]["cols"].split(",")]
    with open(path) as f:
        fields = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    short = [i for i, row in enumerate(fields, 1) if len(row) <= max(cols)]
    if short:
        raise ValueError(f"{path}: row {short[0]} has fewer than {max(cols) + 1} columns")
    return [[row[c] for c in cols] for row in fields]


def _most_common(values):
    # ties go to the value met first, so the baseline does not depend on Counter's internals
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], -values.index(v)))


def caption(train, test) -> float:
    guess = _most_common([ref for row in train for ref in references(row[2])])
    return caption_scores({i: guess for i in range(len(test))},
                          {i: references(row[2]) for i, row in enumerate(test)})["CIDEr"]


def _box(text: str) -> List[float]:
    return [float(v) for v in text.split(",")]


def refcoco(train, test) -> float:
    boxes = [_box(row[3]) for row in train]
    candidates = boxes + [[statistics.median(b[k] for b in boxes) for k in range(4)]]
    fitted = max(candidates, key=lambda c: sum(acc_at_iou(c, b) for b in boxes))
    return sum(acc_at_iou(fitted, _box(row[3])) for row in test) / len(test)


def _top_answer(answers: str) -> str:
    confidences = parse_answers(answers)
    return max(confidences, key=confidences.get)


def vqa(train, test) -> float:
    by_question: Dict[str, list] = {}
    for row in train:
        by_question.setdefault(row[2], []).append(_top_answer(row[3]))
    overall = _most_common([a for answers in by_question.values() for a in answers])
    guess = {q: _most_common(answers) for q, answers in by_question.items()}
    return sum(vqa_score(guess.get(row[2], overall), parse_answers(row[3])) for row in test) / len(test)


def snli_ve(train, test) -> float:
    majority = _most_common([row[4] for row in train])
    return sum(row[4] == majority for row in test) / len(test)


BASELINES: Dict[str, Callable] = {"caption": caption, "refcoco": refcoco, "vqa": vqa, "snli_ve": snli_ve}
DESCRIPTION = {"caption": "the most common training caption", "refcoco": "one fixed box fitted on training",
               "vqa": "the most common training answer of the question string", "snli_ve": "the majority class"}


def baseline_of(data: str, task: str, split: str) -> float:
    """The trivial baseline of `task` on `split` (valid or test) of the benchmark in folder `data`."""
    path = os.path.join(data, f"downstream_{TASKS[task]['file']}_{{}}.tsv")
    return BASELINES[task](read_rows(path.format("train"), task), read_rows(path.format(split), task))


@functools.lru_cache(maxsize=None)
def baseline(task: str, split: str = "test", quick: bool = False) -> float:
    """The trivial baseline on the demo's synthetic benchmark (made first if it is not there)."""
    _demo(quick, "DEMO_DATA_ONLY", quiet=True)
    return baseline_of(os.environ["DEMO_DATA"], task, split)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick demo data")
    a = ap.parse_args(argv)
    for task in TASKS:
        print(f"{task}: {DESCRIPTION[task]}: {TASKS[task]['metric']} valid {baseline(task, 'valid', a.quick):.4f}, "
              f"test {baseline(task, 'test', a.quick):.4f}")


if __name__ == "__main__":
    os.chdir(REPO)
    main()
