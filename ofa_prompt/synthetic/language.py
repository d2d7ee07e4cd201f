"""Text for the four tasks, in two phrasings: `pretrain` (what the backbone learns first) and
`downstream` (what tuning adapts it to).

Captions: pretraining mostly lists the shapes ("a red circle and a blue square", three ways of saying
it) and only one reference in four names positions; downstream references always name positions, in
phrasings the pretraining never used but with words it did. So a frozen backbone writes the plain list,
and a tuned one has to learn the downstream style.
"""
import random
from typing import Dict, List, Tuple

from .scene import COLORS, SHAPES, Shape, all_combos

STAGES = ("pretrain", "downstream")
NUMBERS = ("zero", "one", "two", "three", "four")
ANNOTATORS = 10  # VQA answers per question, as in VQAv2
NEUTRAL_PROPERTIES = {"pretrain": ("heavy", "wooden", "new"), "downstream": ("soft", "old", "shiny")}


def listing(parts: List[str]) -> str:
    """'x', 'x and y', 'x , y and z' (commas are separate words for the word-level tokenizer)."""
    return parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: List[Shape], stage: str) -> List[str]:
    plain = listing([f"a {s.name}" for s in scene])
    where_first = listing([f"at the {s.position} a {s.name}" for s in scene])
    if stage == "pretrain":
        return [plain, f"an image of {plain}", f"a picture of {plain}", where_first]
    return [
        where_first,
        listing([f"a {s.name} at the {s.position}" for s in scene]),
        listing([f"a {s.name} on the {s.position}" for s in scene]),
    ]


def _unique(scene, attribute):
    values = [getattr(s, attribute) for s in scene]
    return [s for s in scene if values.count(getattr(s, attribute)) == 1]


def questions(scene: List[Shape], stage: str, rng: random.Random) -> List[Tuple[str, str, List[str]]]:
    """(question, true answer, candidate wrong answers) for every question family that fits the scene."""
    present = {(s.color, s.shape) for s in scene}
    absent = sorted(set(all_combos()) - present)
    count = NUMBERS[len(scene)]
    wrong_counts = [n for n in NUMBERS[1:4] if n != count]
    out = []
    if stage == "pretrain":
        for s in _unique(scene, "shape"):
            out.append((f"what color is the {s.shape}?", s.color, [c for c in COLORS if c != s.color]))
        for s in _unique(scene, "color"):
            out.append((f"what shape is the {s.color} object?", s.shape, [x for x in SHAPES if x != s.shape]))
        out.append(("how many shapes are there?", count, wrong_counts))
        color, shape = rng.choice(sorted(present)) if rng.random() < 0.5 else rng.choice(absent)
        answer = "yes" if (color, shape) in present else "no"
        out.append((f"is there a {color} {shape}?", answer, ["no" if answer == "yes" else "yes"]))
    else:
        for s in _unique(scene, "shape"):
            out.append((f"what is the color of the {s.shape}?", s.color, [c for c in COLORS if c != s.color]))
        for s in _unique(scene, "color"):
            out.append((f"which shape is {s.color}?", s.shape, [x for x in SHAPES if x != s.shape]))
        out.append(("how many objects are in the picture?", count, wrong_counts))
        s = rng.choice(scene)
        out.append((f"where is the {s.name}?", s.position, [p for p in ("top left", "top right", "bottom left",
                                                                         "bottom right") if p != s.position]))
    return out


def annotator_answers(truth: str, wrong: List[str], rng: random.Random) -> Dict[str, float]:
    """VQA-style soft labels: most of the 10 annotators agree, a few say something else;
    confidence = min(#annotators / 3, 1), as OFA and the VQA metric count them."""
    agree = rng.randint(8, ANNOTATORS)
    votes = [truth] * agree + [rng.choice(wrong) for _ in range(ANNOTATORS - agree)]
    return {a: min(votes.count(a) / 3, 1.0) for a in sorted(set(votes), key=lambda a: (-votes.count(a), a))}


def format_answers(conf: Dict[str, float]) -> str:
    """OFA's answer column: conf1|!+answer1&&conf2|!+answer2."""
    return "&&".join(f"{round(c, 4)}|!+{a}" for a, c in conf.items())


def referring_expression(shape: Shape, stage: str, rng: random.Random) -> str:
    if stage == "pretrain":
        return f"the {shape.name}"
    return rng.choice([f"the {shape.shape} at the {shape.position}",
                       f"the {shape.color} shape at the {shape.position}"])


def hypothesis(scene: List[Shape], stage: str, label: str, rng: random.Random) -> str:
    """A hypothesis about the image with the given label (entailment / contradiction / neutral)."""
    present = sorted({(s.color, s.shape) for s in scene})
    n = len(scene)
    if label == "neutral":  # a property the picture cannot show
        color, shape = rng.choice(present)
        return f"the {color} {shape} is {rng.choice(NEUTRAL_PROPERTIES[stage])}"
    about_count = rng.random() < 0.3
    if about_count:
        k = n if label == "entailment" else rng.choice([m for m in (1, 2, 3) if m != n])
        noun = "shape" if k == 1 else "shapes"
        return (f"there {'is' if k == 1 else 'are'} {NUMBERS[k]} {noun}" if stage == "pretrain"
                else f"the image shows {NUMBERS[k]} {noun}")
    pool = present if label == "entailment" else sorted(set(all_combos()) - set(present))
    color, shape = rng.choice(pool)
    return f"there is a {color} {shape}" if stage == "pretrain" else f"the image shows a {color} {shape}"
