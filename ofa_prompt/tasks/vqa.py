"""Generative VQA (`--task vqa_gen`): answers are chosen among the candidate answer set
(`--ans2label-file`), OFA's all-candidate inference; scored with VQA accuracy."""
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.tokenize import clean_text
from ..metrics.vqa import parse_answers, vqa_score
from .base import DECODER_PROMPT_TYPES, OFATask, OFATaskConfig


@dataclass
class VqaGenConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={"help": "validate by VQA accuracy"})
    ans2label_file: Optional[str] = field(default=None, metadata={
        "help": "candidate answers: a JSON list or {answer: label} dict, or one answer per line"})
    add_object: bool = field(default=False, metadata={"help": "append the detected object labels to the question"})
    max_object_length: int = field(default=30, metadata={"help": "at most this many object labels"})
    prompt_type: DECODER_PROMPT_TYPES = field(
        default="none", metadata={"help": "OFA: also feed the question to the decoder (src: with eos, prev_output: without)"})


def read_answer_set(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ans2label-file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        answers = list(data) if isinstance(data, (list, dict)) else None
    except json.JSONDecodeError:
        answers = [line.strip() for line in text.splitlines() if line.strip()]
    if not answers:
        raise ValueError(f"--ans2label-file {path}: no answers (expected a JSON list/dict or one answer per line)")
    return answers


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(OFATask):
    default_cols = "0,5,2,3,4"
    column_names = "uniq_id, image, question, answers (conf|!+answer&&...), object labels"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        if cfg.eval_acc and not cfg.ans2label_file:  # fail now, not at the first validation hours later
            raise ValueError("--eval-acc for vqa_gen chooses among candidate answers: pass --ans2label-file")
        self.answers = read_answer_set(cfg.ans2label_file) if cfg.ans2label_file else None
        self.candidates = [self.encode(" " + a) for a in self.answers] if self.answers else None

    def check_row(self, cols):
        _, image, question, ref, _ = cols
        self.check_image(image)
        self.check_text(clean_text(question), "question")
        parse_answers(ref)

    def question(self, question, objects):
        text = " " + clean_text(question, self.cfg.max_src_length)
        if not text.endswith("?"):
            text += "?"
        if self.cfg.add_object and objects.strip():
            text += " object: " + " ".join(objects.strip().split("&&")[:self.cfg.max_object_length])
        return text

    def build_sample(self, cols, train):
        uniq_id, image, question, ref, objects = cols
        refs = parse_answers(ref)
        answer = max(refs, key=refs.get)  # OFA trains on the most confident answer, weighted by its confidence
        source = self.source(self.question(question, objects))
        prev, tgt = self.decoder_io(self.encode(" " + answer, self.cfg.max_tgt_length), self.decoder_prefix(source))
        patch, _, _ = self.image(image)
        return {"uniq_id": uniq_id, "source": source, "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": refs, "conf": refs[answer]}

    def generate(self, generator, models, sample):
        if self.candidates is None:
            raise ValueError("VQA inference chooses among candidate answers: pass --ans2label-file")
        return self.choose_candidate(models, sample, self.candidates)

    def sample_score(self, hypothesis, reference, meta):
        return vqa_score(hypothesis, reference)
