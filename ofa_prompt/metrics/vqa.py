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
    out = {}
    for item in ref.split("&&"):
        conf, sep, answer = item.partition("|!+")
        if not sep or not answer.strip():
            raise ValueError(f"{where}: answer {item!r} is not of the form 'confidence|!+answer'")
        try:
            out[answer.strip()] = float(conf)
        except ValueError:
            raise ValueError(f"{where}: confidence {conf!r} of answer {answer!r} is not a number")
    return out


def question_id(uniq_id) -> Union[int, str]:
    """A predictions file's question_id: an integer, as OFA writes it (int(uniq_id)) and the VQA evaluation
    server reads it; an id that is not a decimal integer (a custom TSV's) stays the string it is."""
    text = str(uniq_id).strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else uniq_id
