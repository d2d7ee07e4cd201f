"""Generative VQA (`--task vqa_gen`): answers come from the candidate answer set (`--ans2label-file`),
by OFA's all-candidate scoring or beam search restricted to it (`--val-inference-type`); scored with
VQA accuracy."""
import io
import json
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.tokenize import clean_text
from ..metrics.vqa import parse_answers, vqa_score
from .base import DECODER_PROMPT_TYPES, OFATask, OFATaskConfig


@dataclass
class VqaGenConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={
        "help": "accepted; as in OFA, validation always scores VQA accuracy (logged as score and vqa_score)"})
    ans2label_file: Optional[str] = field(default=None, metadata={
        "help": "candidate answers: OFA's pickled {answer: label} dict (read without running code), a JSON "
                "list or dict, or one answer per line"})
    val_inference_type: ChoiceEnum(["allcand", "beamsearch"]) = field(default="allcand", metadata={
        "help": "allcand: the most likely candidate answer; beamsearch: beam search (--eval-args, --beam) "
                "restricted to the candidate answers; in validation and fairseq-generate"})
    valid_batch_size: int = field(default=20, metadata={
        "help": "allcand: candidate answers scored per decoder pass for each sample (OFA's option; memory only)"})
    add_object: bool = field(default=False, metadata={"help": "append the detected object labels to the question"})
    max_object_length: int = field(default=30, metadata={"help": "at most this many object labels"})
    prompt_type: DECODER_PROMPT_TYPES = field(
        default="none", metadata={"help": "OFA: also feed the question to the decoder (src: with eos, prev_output: without)"})


class _PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds plain data only (dict, list, str, numbers): every class or function a pickle names is
    refused, so loading one runs no code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain dicts/lists of strings are read")


def read_answer_set(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ans2label-file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith((".pkl", ".pickle")) or raw[:1] == b"\x80":  # protocol 2+ pickles start with 0x80
        try:
            data = _PlainDataUnpickler(io.BytesIO(raw), encoding="utf-8").load()
        except Exception as e:  # any malformed or hostile pickle
            raise ValueError(f"--ans2label-file {path}: not a readable pickle of plain data: {e}") from e
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--ans2label-file {path}: neither a pickle nor UTF-8 text: {e}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [line.strip() for line in text.splitlines() if line.strip()]
    answers = list(data) if isinstance(data, (list, dict)) else []
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"--ans2label-file {path}: expected answers as strings (a pickled or JSON dict/list, "
                         "or one answer per line)")
    return answers


def answer_trie(candidates: List[torch.Tensor], eos: int) -> Dict[tuple, List[int]]:
    """Every prefix of a candidate answer (token ids, then eos) -> the tokens that may follow it."""
    trie = defaultdict(set)
    for tokens in candidates:
        seq = tokens.tolist() + [eos]
        for i, token in enumerate(seq):
            trie[tuple(seq[:i])].add(token)
    return {prefix: sorted(nxt) for prefix, nxt in trie.items()}


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(OFATask):
    default_cols = "0,5,2,3,4"
    column_names = "uniq_id, image, question, answers (conf|!+answer&&...), object labels"
    ofa_metric = "vqa_score"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        if not cfg.ans2label_file:  # validation always scores: fail now, not at the first validation hours later
            raise ValueError("vqa_gen chooses its answers among candidate answers: pass --ans2label-file")
        if cfg.val_inference_type == "beamsearch" and cfg.prompt_type == "src":
            # the forced source would bring its eos, which ends every hypothesis before the answer
            raise ValueError("--val-inference-type=beamsearch with --prompt-type=src: use prev_output (as OFA's "
                             "scripts) or allcand")
        self.answers = read_answer_set(cfg.ans2label_file)
        self.candidates = [self.encode(" " + a) for a in self.answers]
        self.next_tokens = answer_trie(self.candidates, dictionary.eos())
        self._prefixes = {}  # sample id -> decoder prefix, for the batch being generated

    def eval_enabled(self):
        return True  # OFA's vqa_gen always scores validation

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

    def build_generator(self, models, args, **kwargs):
        if self.cfg.val_inference_type == "beamsearch":
            kwargs["prefix_allowed_tokens_fn"] = self.allowed_next
        return super().build_generator(models, args, **kwargs)

    def allowed_next(self, sample_id: int, tokens: torch.Tensor) -> List[int]:
        """beamsearch: force the sample's decoder prefix (--prompt-type), then follow the answer trie."""
        prefix = self._prefixes[sample_id]
        if len(tokens) < len(prefix):
            return [int(prefix[len(tokens)])]
        # a beam already off the trie (only when fewer answers than beams remain) can only end
        return self.next_tokens.get(tuple(tokens[len(prefix):].tolist()), [self.dictionary.eos()])

    def generate(self, generator, models, sample):
        if self.cfg.val_inference_type == "allcand":
            return self.choose_candidate(models, sample, self.candidates)
        pad = self.dictionary.pad()
        prefixes = [self.decoder_prefix(s[s.ne(pad)]) for s in sample["net_input"]["src_tokens"]]
        prefixes = [self.bos if p is None else p for p in prefixes]
        # fairseq's search names a sample by its id
        self._prefixes = dict(zip(sample["id"].tolist(), prefixes))
        hypos = super().generate(generator, models, sample)
        # hypotheses start after the bos: drop the rest of the prefix
        return [[{**h, "tokens": h["tokens"][len(p) - 1:]} for h in beams] for beams, p in zip(hypos, prefixes)]

    def sample_score(self, hypothesis, reference, meta):
        return vqa_score(hypothesis, reference)
