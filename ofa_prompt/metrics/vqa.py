"""VQA accuracy, and the question ids of VQA predictions."""
import re
from typing import Dict, List, Union


def vqa_score(answer: str, ref_dict: Dict[str, float]) -> float:
    """OFA's score: the confidence OFA's TSV gives this answer (0 if absent). With confidences written
    as min(#annotators giving the answer / 3, 1) this is the common VQA accuracy."""
    return float(ref_dict.get(answer.strip(), 0.0))


def vqa_accuracy(answer: str, annotator_answers: List[str]) -> float:
    """min(#annotators agreeing / 3, 1)."""
    return min(sum(a == answer.strip() for a in annotator_answers) / 3.0, 1.0)


def parse_answers(ref: str, where: str = "") -> Dict[str, float]:
    """OFA's `conf|!+answer&&conf|!+answer` column -> {answer: confidence}."""
    at = f"{where}: " if where else ""  # the TSV reader names file and line itself
    out = {}
    for item in ref.split("&&"):
        conf, sep, answer = item.partition("|!+")
        answer = answer.strip()
        if not sep or not answer:
            raise ValueError(f"{at}answer {item!r} is not of the form 'confidence|!+answer'")
        try:
            value = float(conf)
        except ValueError:
            raise ValueError(f"{at}confidence {conf!r} of answer {answer!r} is not a number")
        # a confidence is a share of annotators: outside [0, 1] (or NaN) it would weigh the loss and the
        # accuracy with a meaning it cannot have (5.0 reported an accuracy of 1.25)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{at}confidence {conf!r} of answer {answer!r} is not between 0 and 1")
        if answer in out:
            raise ValueError(f"{at}answer {answer!r} is given twice (confidences {out[answer]:g} and {conf})")
        out[answer] = value
    return out


def question_id(uniq_id) -> Union[int, str]:
    """A predictions file's question_id: an integer, as OFA writes it (int(uniq_id)) and the VQA evaluation
    server reads it; an id that is not a decimal integer (a custom TSV's) stays the string it is."""
    text = str(uniq_id).strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else uniq_id
