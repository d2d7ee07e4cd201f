"""fairseq scorers (`fairseq-generate --scoring ofa_caption|ofa_vqa|ofa_refcoco|ofa_snli_ve`).

Each pairs the hypotheses fairseq-generate hands it with the references the task recorded
(see records.py), prints the official metric, and optionally writes:
* `--results-path DIR`: `DIR/{gen_subset}_predict.json`, the predictions file OFA's evaluate.py writes
  there, with OFA's keys per task (what OFA's coco_eval.py and the VQA server read). fairseq-generate
  itself writes its whole output, the final "Generate ..." metric line included, to
  `DIR/generate-{gen_subset}.txt` instead of stdout;
* `--ofa-results-file F`: JSON lines {id, hypothesis, references, score}.
Both are written atomically (a reader never sees half a file), with the permissions the user's umask
gives a new file.

OFA's command lines pass no --scoring: `use_task_scorer` makes fairseq-generate's default (bleu) the
task's own scorer.
"""
import json
import logging
import os
import string
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer
from omegaconf import II, DictConfig

from ..atomic_file import write_atomically
from ..fairseq_compat.config import evaluated_paths, root_of, use_scoring
from .caption import caption_scores
from .grounding import acc_at_iou, bins_to_box
from .records import RECORDER
from .vqa import question_id, vqa_score

logger = logging.getLogger(__name__)

# each task's scorer, which fairseq-generate uses when no --scoring is given
TASK_SCORERS = {"caption": "ofa_caption", "vqa_gen": "ofa_vqa", "refcoco": "ofa_refcoco", "snli_ve": "ofa_snli_ve"}


@dataclass
class OFAScorerConfig(FairseqDataclass):
    ofa_results_file: Optional[str] = field(
        default=None, metadata={"help": "write JSON lines {id, hypothesis, references, score} here"})
    # fairseq-generate's own --results-path and --gen-subset (no help: fairseq's options, not new ones)
    results_path: Optional[str] = II("common_eval.results_path")
    gen_subset: Optional[str] = II("dataset.gen_subset")


def predictions_path(cfg) -> Optional[str]:
    """DIR/{gen_subset}_predict.json under --results-path DIR, as OFA's evaluate.py names it; else None."""
    folder, subset = getattr(cfg, "results_path", None), getattr(cfg, "gen_subset", None)
    # a config built outside fairseq-generate's (a test, a script) holds the interpolation text itself
    if not folder or str(folder).startswith("${"):
        return None
    subset = "test" if not subset or str(subset).startswith("${") else subset  # fairseq's default --gen-subset
    return os.path.join(folder, f"{subset}_predict.json")


class RecordScorer(BaseScorer):
    """Collects (record, hypothesis) pairs; subclasses score one pair or the whole set."""

    metric = "score"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.items = []  # (sample_id, hypothesis, references, meta)

    def add_string(self, ref, pred):
        rec = RECORDER.pop()
        self.items.append((rec.sample_id, pred.strip(), rec.references, rec.meta))

    def sample_score(self, hypothesis, references, meta) -> float:
        raise NotImplementedError

    def scores(self):
        """(per-sample scores, {metric: corpus value})."""
        per = [self.sample_score(h, r, m) for _, h, r, m in self.items]
        return per, {self.metric: sum(per) / max(len(per), 1)}

    def score(self) -> float:
        return self.scores()[1][self.metric]

    def prediction(self, sample_id, hypothesis, references, meta) -> dict:
        """One entry of {gen_subset}_predict.json, with the keys OFA's evaluate.py writes for the task."""
        raise NotImplementedError

    def result_string(self) -> str:
        per, corpus = self.scores()
        if self.cfg.ofa_results_file:
            write_results(self.cfg.ofa_results_file, self.items, per)
        path = predictions_path(self.cfg)
        if path:
            write_predictions(path, [self.prediction(*item) for item in self.items])
            logger.info("predictions of %d samples written to %s", len(self.items), path)
        return ", ".join(f"{k}: {v:.4f}" for k, v in corpus.items()) + f" ({len(self.items)} samples)"


def write_results(path, items, per_sample):
    """--ofa-results-file: JSON lines {id, hypothesis, references, score}."""
    def write(f):
        for (sample_id, hyp, refs, _), s in zip(items, per_sample):
            f.write(json.dumps({"id": sample_id, "hypothesis": hyp, "references": refs, "score": s}) + "\n")

    write_atomically(path, write, ".jsonl")


def write_predictions(path, predictions):
    """{gen_subset}_predict.json: one JSON list, as OFA's evaluate.py writes it."""
    write_atomically(path, lambda f: json.dump(predictions, f), ".json")


def ofa_caption_text(caption: str) -> str:
    """A caption as OFA's evaluate.py writes it for coco_eval.py: ASCII punctuation removed, stripped."""
    return caption.translate(str.maketrans("", "", string.punctuation)).strip()


def use_task_scorer(task_cfg, explicit):
    """fairseq-generate --path with no --scoring: the task's own scorer instead of fairseq's default, bleu.
    OFA's evaluate.py needs no such option, so OFA's command lines give none and expect the task's metric
    and {gen_subset}_predict.json. An explicit --scoring (bleu too) is kept: `explicit` holds the options
    the command line names (fairseq_compat.config.explicit_options)."""
    if not isinstance(task_cfg, DictConfig) or task_cfg.get("_name") not in TASK_SCORERS:
        return
    root = root_of(task_cfg)
    if not evaluated_paths(task_cfg) or "scoring" not in root:
        return  # not an evaluation (fairseq-train validates with the task's own scoring)
    current = root.scoring.get("_name") if isinstance(root.scoring, DictConfig) else root.scoring
    if current != "bleu" or "scoring" in explicit:
        return
    name = TASK_SCORERS[task_cfg._name]
    use_scoring(task_cfg, name)
    logger.info("--scoring %s (the task's metric; fairseq-generate's default would be bleu)", name)


@register_scorer("ofa_caption", dataclass=OFAScorerConfig)
class CaptionScorer(RecordScorer):
    metric = "CIDEr"

    def scores(self):
        hyps = {i: h for i, (_, h, _, _) in enumerate(self.items)}
        refs = {i: r for i, (_, _, r, _) in enumerate(self.items)}
        corpus, per = caption_scores(hyps, refs, per_image=True)  # CIDEr of each caption within this corpus
        return per, corpus

    def prediction(self, sample_id, hypothesis, references, meta):
        return {"image_id": str(sample_id), "caption": ofa_caption_text(hypothesis)}


@register_scorer("ofa_vqa", dataclass=OFAScorerConfig)
class VQAScorer(RecordScorer):
    metric = "accuracy"

    def sample_score(self, hypothesis, references, meta):
        return vqa_score(hypothesis, references)

    def prediction(self, sample_id, hypothesis, references, meta):
        return {"question_id": question_id(sample_id), "answer": hypothesis}


@register_scorer("ofa_refcoco", dataclass=OFAScorerConfig)
class RefcocoScorer(RecordScorer):
    metric = "Acc@0.5"

    @staticmethod
    def box(hypothesis, meta):
        """The box of `hypothesis` in original-image pixels (None unless four location tokens)."""
        return bins_to_box(hypothesis, meta["num_bins"], meta["max_image_size"], meta["w_resize_ratio"],
                           meta["h_resize_ratio"])

    def sample_score(self, hypothesis, references, meta):
        return acc_at_iou(self.box(hypothesis, meta), references)

    def prediction(self, sample_id, hypothesis, references, meta):
        return {"uniq_id": sample_id, "box": self.box(hypothesis, meta)}


@register_scorer("ofa_snli_ve", dataclass=OFAScorerConfig)
class SNLIVEScorer(RecordScorer):
    metric = "accuracy"

    def sample_score(self, hypothesis, references, meta):
        return float(hypothesis == references)

    def prediction(self, sample_id, hypothesis, references, meta):
        return {"uniq_id": sample_id, "answer": hypothesis}
