"""fairseq scorers (`fairseq-generate --scoring ofa_caption|ofa_vqa|ofa_refcoco|ofa_snli_ve`).

Each pairs the hypotheses fairseq-generate hands it with the references the task recorded
(see records.py), prints the official metric, and optionally writes a JSON-lines results file.
"""
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer

from .caption import caption_scores
from .grounding import acc_at_iou, bins_to_box
from .records import RECORDER
from .vqa import vqa_score


@dataclass
class OFAScorerConfig(FairseqDataclass):
    ofa_results_file: Optional[str] = field(
        default=None, metadata={"help": "write JSON lines {id, hypothesis, references, score} here"})


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

    def result_string(self) -> str:
        per, corpus = self.scores()
        if self.cfg.ofa_results_file:
            write_results(self.cfg.ofa_results_file, self.items, per)
        return ", ".join(f"{k}: {v:.4f}" for k, v in corpus.items()) + f" ({len(self.items)} samples)"


def write_results(path, items, per_sample):
    """JSON lines, written to a temporary file and renamed so that a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="tmp-", suffix=".jsonl", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for (sample_id, hyp, refs, _), s in zip(items, per_sample):
            f.write(json.dumps({"id": sample_id, "hypothesis": hyp, "references": refs, "score": s}) + "\n")
    os.replace(tmp, path)


@register_scorer("ofa_caption", dataclass=OFAScorerConfig)
class CaptionScorer(RecordScorer):
    metric = "CIDEr"

    def scores(self):
        hyps = {i: h for i, (_, h, _, _) in enumerate(self.items)}
        refs = {i: r for i, (_, _, r, _) in enumerate(self.items)}
        corpus, per = caption_scores(hyps, refs, per_image=True)  # CIDEr of each caption within this corpus
        return per, corpus


@register_scorer("ofa_vqa", dataclass=OFAScorerConfig)
class VQAScorer(RecordScorer):
    metric = "accuracy"

    def sample_score(self, hypothesis, references, meta):
        return vqa_score(hypothesis, references)


@register_scorer("ofa_refcoco", dataclass=OFAScorerConfig)
class RefcocoScorer(RecordScorer):
    metric = "Acc@0.5"

    def sample_score(self, hypothesis, references, meta):
        box = bins_to_box(hypothesis, meta["num_bins"], meta["max_image_size"], meta["w_resize_ratio"],
                          meta["h_resize_ratio"])
        return acc_at_iou(box, references)


@register_scorer("ofa_snli_ve", dataclass=OFAScorerConfig)
class SNLIVEScorer(RecordScorer):
    metric = "accuracy"

    def sample_score(self, hypothesis, references, meta):
        return float(hypothesis == references)
