"""Image captioning (`--task caption`), scored with CIDEr (`--eval-cider`, `--scoring ofa_caption`)."""
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task

from ..data.tokenize import clean_text
from ..metrics.caption import simple_tokenize
from .base import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)

INSTRUCTION = " what does the image describe?"


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider: bool = field(default=False, metadata={"help": "validate by generating captions and scoring CIDEr"})
    eval_bleu: bool = field(default=False, metadata={"help": "accepted for OFA's scripts; CIDEr is the metric reported"})
    eval_cider_cached_tokens: Optional[str] = field(default=None, metadata={
        "help": "OFA's pickled document frequencies for validation CIDEr-D: checked to exist but not read "
                "(a pickle can run code); validation CIDEr takes them from each batch's references"})


def note_cider_cache(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--eval-cider-cached-tokens not found: {path}")
    logger.warning("--eval-cider-cached-tokens %s is not read (a pickle can run code when loaded): validation CIDEr "
                   "takes document frequencies from each batch's references (pycocoevalcap CIDEr, not OFA's "
                   "CIDEr-D over cached COCO frequencies); fairseq-generate --scoring ofa_caption reports the "
                   "official corpus CIDEr", path)


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(OFATask):
    default_cols = "0,4,2"
    column_names = "uniq_id, image, caption"
    metric = "cider"
    eval_flag = "eval_cider"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        if cfg.eval_cider_cached_tokens:
            note_cider_cache(cfg.eval_cider_cached_tokens)

    def build_generator(self, models, args, **kwargs):
        # captions are text: no <mask>, image-code or location tokens
        allowed = torch.arange(len(self.dictionary)) < self.dictionary.index("<mask>")
        return super().build_generator(self.restrict(models, allowed), args, **kwargs)

    def check_row(self, cols):
        _, image, caption = cols
        self.check_image(image)
        if not any(clean_text(c) for c in caption.split("&&")):
            raise ValueError("empty caption")

    def build_sample(self, cols, train):
        uniq_id, image, caption = cols
        refs = [c.strip() for c in caption.split("&&") if clean_text(c)]
        target = clean_text(random.choice(refs) if train else refs[0], self.cfg.max_tgt_length)
        prev, tgt = self.decoder_io(self.encode(" " + target, self.cfg.max_tgt_length))
        patch, _, _ = self.image(image)
        return {"uniq_id": uniq_id, "source": self.source(INSTRUCTION), "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": refs}

    def batch_scores(self, hyps, sample):
        # Validation CIDEr over the batch as the corpus, with the Java-free tokenizer (no JVM per batch),
        # as OFA averages per-batch CIDEr; fairseq-generate's ofa_caption scorer reports the official one.
        refs = {i: [simple_tokenize(r) for r in rs] for i, rs in enumerate(sample["refs"])}
        hyps = {i: simple_tokenize(h) for i, h in enumerate(hyps)}
        from pycocoevalcap.cider.cider import Cider

        _, per = Cider().compute_score(refs, {i: [h] for i, h in hyps.items()})
        return [float(s) for s in per]
