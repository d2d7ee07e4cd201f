"""Generative VQA (`--task vqa_gen`), scored with VQA accuracy.

As in OFA, by default the candidate answer set (`--ans2label-file`) constrains both training and
inference: the loss at each answer token is normalized over the tokens that continue a candidate answer
(OFA's trie), and inference picks the most likely candidate (allcand) or runs beam search restricted to
the candidates (beamsearch: `--val-inference-type beamsearch`, or OFA's evaluate.py flag
`--beam-search-vqa-eval`). `--unconstrained-training` is OFA's open-ended VQA: no answer set, the loss over
the whole vocabulary, and beam search generating answers freely."""
import io
import json
import logging
import math
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task

from ..data.image import image_size_of, load_image
from ..data.tokenize import clean_text
from ..file_version import file_version
from ..metrics.vqa import parse_answers, vqa_score
from ..per_sample_search import Rule, allow_only, use_per_sample_rules
from .base import OFATask
from .options import DECODER_PROMPT_TYPES, OFATaskConfig

logger = logging.getLogger(__name__)
INFERENCE_TYPES = ChoiceEnum(["allcand", "beamsearch"])


@dataclass
class VqaGenConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={
        "help": "accepted; as in OFA, validation always scores VQA accuracy (logged as score and vqa_score)"})
    ans2label_file: Optional[str] = field(default=None, metadata={
        "help": "candidate answers: OFA's pickled {answer: label} dict (read without running code), a JSON "
                "list or dict, or one answer per line; required unless --unconstrained-training"})
    unconstrained_training: bool = field(default=False, metadata={
        "help": "OFA's open-ended VQA, without a candidate answer set: the training loss is normalized over the "
                "whole vocabulary (by default only over the tokens that continue a candidate answer, OFA's trie), "
                "and beam search (in validation and fairseq-generate) generates answers freely; "
                "--ans2label-file is then not used"})
    val_inference_type: Optional[INFERENCE_TYPES] = field(default=None, metadata={
        "help": "allcand (the default): the most likely candidate answer; beamsearch (the default with "
                "--unconstrained-training): beam search (--eval-args in validation, --beam ... in fairseq-generate), "
                "restricted to the candidate answers unless --unconstrained-training"})
    beam_search_vqa_eval: bool = field(default=False, metadata={
        "help": "OFA's evaluate.py flag: the same as --val-inference-type beamsearch (an error together with "
                "--val-inference-type allcand)"})
    valid_batch_size: int = field(default=20, metadata={
        "help": "allcand: candidate answers scored per decoder pass for each sample (OFA's option; memory only)"})
    add_object: bool = field(default=False, metadata={"help": "append the detected object labels to the question"})
    max_object_length: int = field(default=30, metadata={"help": "at most this many object labels"})
    prompt_type: DECODER_PROMPT_TYPES = field(
        default="none", metadata={"help": "OFA: also feed the question to the decoder (src: with eos, "
                                          "prev_output: without)"})


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


def answer_coverage(refs: Dict[str, float], answers: Set[str]) -> Tuple[float, float]:
    """(the best confidence among the answers of `answers`, 0 if none; the best confidence): a question
    whose best answer is outside the candidate answers cannot be answered best by constrained inference."""
    return max((c for a, c in refs.items() if a in answers), default=0.0), max(refs.values())


def answer_trie(candidates: List[torch.Tensor], eos: int) -> Dict[tuple, List[int]]:
    """Every prefix of a candidate answer (token ids, then eos) -> the tokens that may follow it."""
    trie = defaultdict(set)
    for tokens in candidates:
        seq = tokens.tolist() + [eos]
        for i, token in enumerate(seq):
            trie[tuple(seq[:i])].add(token)
    return {prefix: sorted(nxt) for prefix, nxt in trie.items()}


def inference_type(val_inference_type: Optional[str], beam_search_vqa_eval: bool, unconstrained_training: bool,
                   ans2label_file: Optional[str]) -> str:
    """The one place that decides vqa_gen's inference: "allcand" or "beamsearch", from --val-inference-type,
    OFA's --beam-search-vqa-eval and --unconstrained-training; contradictory options are an error."""
    chosen = str(getattr(val_inference_type, "value", val_inference_type)) if val_inference_type else None
    if beam_search_vqa_eval and chosen == "allcand":
        raise ValueError("--beam-search-vqa-eval asks for beam search but --val-inference-type=allcand for "
                         "all-candidate scoring: give only one of them")
    if not unconstrained_training and not ans2label_file:
        raise ValueError("--task vqa_gen: pass --ans2label-file, the candidate answers OFA constrains training "
                         "to and chooses answers among, or --unconstrained-training for open-ended VQA (training "
                         "over the whole vocabulary, beam search generating answers freely)")
    if beam_search_vqa_eval:
        chosen = "beamsearch"
    if chosen is None:
        return "beamsearch" if unconstrained_training else "allcand"
    if chosen == "allcand" and unconstrained_training:
        # OFA asserts the same: open-ended VQA has no fixed answer set to score
        raise ValueError("--val-inference-type=allcand scores the candidate answers, which --unconstrained-training "
                         "does not use: use --val-inference-type=beamsearch (or --beam-search-vqa-eval)")
    return chosen


def answer_constraint_masks(target: torch.Tensor, next_tokens: Dict[tuple, List[int]], candidates: Set[tuple],
                            pad: int, vocab_size: int):
    """OFA's constrained VQA training (its trie): ([B, T, V] bool masks of the tokens the loss is normalized
    over, the number of rows left unconstrained).

    At every answer position of `target` (pad before the answer, then its tokens and eos), the allowed tokens
    are those that continue the answer so far towards a candidate answer (`next_tokens`, a trie with eos at
    the ends). Other positions (pad targets, which the loss skips) allow everything. A row whose answer is not
    a candidate (`candidates`: token tuples without eos; also an answer cut by --max-tgt-length) is left
    unconstrained: OFA's trie would exclude its own target there, an infinite loss."""
    masks = torch.ones(*target.shape, vocab_size, dtype=torch.bool, device=target.device)
    rows, positions, allowed_rows, allowed_positions, allowed_tokens = [], [], [], [], []
    free = 0
    for b, row in enumerate(target.tolist()):
        kept = [t for t, token in enumerate(row) if token != pad]
        if not kept:
            continue
        start, end = kept[0], kept[-1]  # the answer's first token, its eos
        if tuple(row[start:end]) not in candidates:
            free += 1
            continue
        for t in range(start, end + 1):
            allowed = next_tokens[tuple(row[start:t])]
            rows.append(b)
            positions.append(t)
            allowed_rows += [b] * len(allowed)
            allowed_positions += [t] * len(allowed)
            allowed_tokens += allowed
    if rows:
        masks[rows, positions] = False
        masks[allowed_rows, allowed_positions, allowed_tokens] = True
    return masks, free


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(OFATask):
    default_cols = "0,5,2,3,4"
    column_names = "uniq_id, image, question, answers (conf|!+answer&&...), object labels"
    ofa_metric = "vqa_score"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        # decided once, here (validation always scores: fail now, not at the first validation hours later)
        self.inference_type = inference_type(cfg.val_inference_type, cfg.beam_search_vqa_eval,
                                             cfg.unconstrained_training, cfg.ans2label_file)
        if self.inference_type == "beamsearch" and cfg.prompt_type == "src":
            # the forced source would bring its eos, which ends every hypothesis before the answer
            which = "--beam-search-vqa-eval" if cfg.beam_search_vqa_eval else "--val-inference-type=beamsearch"
            raise ValueError(f"{which} with --prompt-type=src: use prev_output (as OFA's scripts)"
                             + ("" if cfg.unconstrained_training else " or allcand"))
        self.answers = self.candidates = self.next_tokens = None
        self._candidate_set, self._answer_set, self._coverage = set(), set(), []
        if cfg.unconstrained_training:
            if cfg.ans2label_file:  # OFA's train_vqa_distributed.sh passes both: say what happens to it
                logger.warning("--ans2label-file %s is not used with --unconstrained-training (as in OFA): training "
                               "and beam search are open-ended", cfg.ans2label_file)
            logger.info("vqa_gen: open-ended (--unconstrained-training): the loss is over the whole vocabulary and "
                        "beam search generates answers freely")
        else:
            self.answers = read_answer_set(cfg.ans2label_file)
            self.candidates = [self.encode(" " + a) for a in self.answers]
            self.next_tokens = answer_trie(self.candidates, dictionary.eos())
            self._candidate_set = {tuple(c.tolist()) for c in self.candidates}
            self._answer_set = set(self.answers)
        self._rules = {}  # sample id -> its beam-search rule, for the batch being generated
        self._warned_free_rows = self._warned_no_hypothesis = False

    def eval_enabled(self):
        return True  # OFA's vqa_gen always scores validation

    def check_row(self, cols):
        _, image, question, ref, _ = cols
        image_size_of(image)  # BadImage where the image is unreadable or truncated
        self.check_text(clean_text(question), "question")
        refs = parse_answers(ref)
        if self._answer_set:
            best_inside, best = answer_coverage(refs, self._answer_set)
            self.row_stats["questions"] = self.row_stats.get("questions", 0) + 1
            self.row_stats["outside"] = self.row_stats.get("outside", 0) + int(best_inside < best)
            self.row_stats["reachable"] = self.row_stats.get("reachable", 0.0) + best_inside

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        stats = self.row_stats  # what check_row counted over the file (or an earlier run's check of it)
        if stats.get("outside"):
            logger.warning("%s: the most confident answer of %d of %d questions is not among the %d "
                           "--ans2label-file answers: constrained inference cannot give it (the best VQA "
                           "score reachable on these rows is %.4f), and training on them uses a loss over the "
                           "whole vocabulary", self.datasets[split].reader.path, stats["outside"],
                           stats["questions"], len(self._answer_set), stats["reachable"] / stats["questions"])

    def row_check_key(self, cols):
        answers = self.cfg.ans2label_file
        # the answer list is read at start-up; its content decides the counts check_row makes
        return super().row_check_key(cols) + json.dumps(
            list(file_version(answers)) if answers and os.path.isfile(answers) else None)

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
        patch, _, _ = load_image(image, self.image_settings)
        return {"uniq_id": uniq_id, "source": source, "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": refs, "conf": refs[answer]}

    # --- training: OFA's trie constraint on the loss -----------------------------------------------------
    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if getattr(criterion, "use_rdrop", False) and self.next_tokens is not None:
            # the criterion's R-Drop KL runs over the whole vocabulary, where the trie leaves -inf: NaN
            raise ValueError("--use-rdrop with vqa_gen's constrained training (OFA's default, --ans2label-file): "
                             "R-Drop's KL over the answers the candidate set masks out is NaN; pass "
                             "--unconstrained-training, or train without --use-rdrop")
        return criterion

    def with_constraint_masks(self, sample):
        """`sample` with OFA's constraint masks ("constraint_masks", which the criterion applies to the
        logits), unless --unconstrained-training."""
        if self.next_tokens is None or not sample or sample.get("target") is None:
            return sample
        masks, free = answer_constraint_masks(sample["target"], self.next_tokens, self._candidate_set,
                                              self.dictionary.pad(), len(self.dictionary))
        if free and not self._warned_free_rows:
            self._warned_free_rows = True
            logger.warning("%d answer(s) of a batch are not among the --ans2label-file answers (or were cut by "
                           "--max-tgt-length): their loss is over the whole vocabulary (OFA's trie would make it "
                           "infinite); add them to the answer set, or pass --unconstrained-training. Said once.", free)
        return {**sample, "constraint_masks": masks}

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **extra):
        return super().train_step(self.with_constraint_masks(sample), model, criterion, optimizer, update_num,
                                  ignore_grad, **extra)

    def valid_step(self, sample, model, criterion, **extra):
        # OFA's validation loss is constrained too (its datasets carry the masks in every split)
        return super().valid_step(self.with_constraint_masks(sample), model, criterion, **extra)

    # --- inference --------------------------------------------------------------------------------------
    def build_generator(self, models, args, **kwargs):
        generator = super().build_generator(models, args, **kwargs)
        if self.inference_type == "beamsearch" and (self.next_tokens is not None or self.cfg.prompt_type != "none"):
            use_per_sample_rules(generator, lambda sample_id: self._rules[sample_id],
                                 "VQA's beam search (it follows the answer trie and the --prompt-type prefix)")
        return generator

    def answer_rule(self, prefix: torch.Tensor) -> Optional[Rule]:
        """beamsearch: force the sample's decoder prefix (from bos; --prompt-type), then follow the answer trie
        (with --unconstrained-training: any token). None: nothing to force."""
        if len(prefix) == 1 and self.next_tokens is None:
            return None
        eos = [self.dictionary.eos()]

        def rule(tokens, lprobs):
            if len(tokens) < len(prefix):
                allow_only(lprobs, [int(prefix[len(tokens)])])
            elif self.next_tokens is not None:
                # a beam already off the trie (only when fewer answers than beams remain) can only end
                allow_only(lprobs, self.next_tokens.get(tuple(tokens[len(prefix):].tolist()), eos))
        return rule

    def prefix_of(self, source: torch.Tensor) -> torch.Tensor:
        """The decoder's forced start for a sample with (unpadded) `source`: bos, or the --prompt-type prefix."""
        prefix = self.decoder_prefix(source)
        return self.bos if prefix is None else prefix

    def next_token_rule(self, source, generation):
        if self.inference_type != "beamsearch":
            super().next_token_rule(source, generation)  # refused: all-candidate scoring
        return self.answer_rule(self.prefix_of(source))

    def answer_tokens(self, tokens, source):
        return tokens[len(self.prefix_of(source)) - 1:]  # hypotheses start after the bos

    def generate(self, generator, models, sample):
        if self.inference_type == "allcand":
            return self.choose_candidate(models, sample, self.candidates)
        pad = self.dictionary.pad()
        sources = [s[s.ne(pad)] for s in sample["net_input"]["src_tokens"]]
        # fairseq's search names a sample by its id
        self._rules = {i: self.answer_rule(self.prefix_of(s)) for i, s in zip(sample["id"].tolist(), sources)}
        hypos = super().generate(generator, models, sample)
        if any(not beams for beams in hypos) and not self._warned_no_hypothesis:
            self._warned_no_hypothesis = True
            logger.warning("beam search ended without an answer for some questions (the maximum length, "
                           "max_len_a * source length + max_len_b, counts the decoder prefix of --prompt-type "
                           "too): raise --max-len-b (or max_len_b in --eval-args); they are scored as empty "
                           "answers. Said once.")
        eos = torch.tensor([self.dictionary.eos()])
        return [[{**h, "tokens": self.answer_tokens(h["tokens"], source)} for h in beams]
                or [{"tokens": eos, "score": -math.inf, "alignment": None, "positional_scores": eos * 0.0}]
                for beams, source in zip(hypos, sources)]

    def sample_score(self, hypothesis, reference, meta):
        return vqa_score(hypothesis, reference)
