"""Image captioning (`--task caption`), scored with CIDEr and BLEU-4 (`--eval-cider`, `--eval-bleu`,
`--scoring ofa_caption`); OFA's stage 2, self-critical CIDEr optimization, with `--scst` and
`--criterion scst_reward_criterion` (ofa_prompt/criterions/scst.py)."""
import logging
import os
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq import metrics
from fairseq.tasks import register_task

from ..data.image import image_size_of, load_image
from ..data.tokenize import clean_text
from ..fairseq_compat.config import section
from ..metrics.caption import BLEU_KEYS, CiderD, bleu4_from_stats, bleu_stats, scst_words, simple_tokenize
from ..ngram_blocking import block_repeated_ngrams
from .base import OFATask
from .candidates import generation_options
from .options import OFATaskConfig

logger = logging.getLogger(__name__)

INSTRUCTION = " what does the image describe?"


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider: bool = field(default=False, metadata={"help": "validate by generating captions and scoring CIDEr"})
    eval_bleu: bool = field(default=False, metadata={
        "help": "validate by generating captions and scoring corpus BLEU-4, logged as bleu: pycocoevalcap's BLEU "
                "(0-1, Java-free tokenization, fairseq-generate --scoring ofa_caption's Bleu_4), where OFA logs "
                "sacrebleu's 0-100; with --eval-cider too, both are logged"})
    eval_cider_cached_tokens: Optional[str] = field(default=None, metadata={
        "help": "OFA's pickled document frequencies for validation CIDEr-D: checked to exist but not read "
                "(a pickle can run code); validation CIDEr takes them from each batch's references"})
    scst: bool = field(default=False, metadata={
        "help": "self-critical sequence training (OFA's caption stage 2), with --criterion scst_reward_criterion: "
                "the captions generated with --scst-args are rewarded with their CIDEr-D against the image's "
                "references (document frequencies of the training references)"})
    scst_args: str = field(default="{}", metadata={
        "help": 'generation options of the SCST captions as JSON, e.g. \'{"beam":5,"max_len_b":16,'
                '"no_repeat_ngram_size":3}\': every hypothesis of the beam (or every sample, with "sampling") '
                "is one caption; at least 2 per image, each one's baseline being the others' mean reward"})


def note_cider_cache(path: str, option: str = "--eval-cider-cached-tokens",
                     used: str = "validation CIDEr takes document frequencies from each batch's references "
                                 "(pycocoevalcap CIDEr, not OFA's CIDEr-D over cached COCO frequencies); "
                                 "fairseq-generate --scoring ofa_caption reports the official corpus CIDEr"):
    """OFA's CIDEr caches are pickles: check that the file is there, say what is used instead."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{option} not found: {path}")
    logger.warning("%s %s is not read (a pickle can run code when loaded): %s", option, path, used)


def references(caption: str) -> List[str]:
    """The non-empty references of a caption column (OFA joins them with &&)."""
    return [c.strip() for c in caption.split("&&") if clean_text(c)]


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
        self.scst_generator = None
        # SCST's CIDEr-D document frequencies: every training file's references, counted while its rows are
        # checked at loading (one pass over the file); _counting collects the file being read
        self.scst_cider = CiderD()
        self._counted_files = set()
        self._counting: Optional[CiderD] = None
        self._warned_batch_df = False
        self._batch_bleu: Optional[Dict[str, float]] = None

    def eval_enabled(self) -> bool:
        return self.cfg.eval_cider or self.cfg.eval_bleu

    # --- data -------------------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        counting = split == "train" and self.cfg.scst
        self._counting = CiderD() if counting else None
        try:
            super().load_dataset(split, epoch, combine, **kwargs)
        finally:
            found, self._counting = self._counting, None
        reader = self.datasets[split].reader
        # a file is counted once, however often it is loaded (epochs cycle through the training files)
        if counting and reader.path not in self._counted_files:
            if not found.num_images:  # its rows were checked before, for another split (one file for both)
                for i in range(len(reader)):
                    found.add_image([scst_words(r) for r in references(reader[i][2])])
            self._counted_files.add(reader.path)
            self.scst_cider.update(found)
            logger.info("SCST reward: CIDEr-D document frequencies of %d training images (%d so far)",
                        found.num_images, self.scst_cider.num_images)

    def check_row(self, cols):
        _, image, caption = cols
        image_size_of(image)  # BadImage where the image is unreadable or truncated
        refs = references(caption)
        if not refs:
            raise ValueError("empty caption")
        if self._counting is not None:
            self._counting.add_image([scst_words(r) for r in refs])

    def build_sample(self, cols, train):
        uniq_id, image, caption = cols
        refs = references(caption)
        # training: one reference at random, drawn from numpy's generator the dataset seeds per row and epoch
        target = self.target_words(refs[np.random.randint(len(refs))] if train else refs[0])
        prev, tgt = self.decoder_io(self.encode(" " + target, self.cfg.max_tgt_length))
        patch, _, _ = load_image(image, self.image_settings)
        return {"uniq_id": uniq_id, "source": self.source(INSTRUCTION), "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": refs}

    # --- model, generators and criterion ----------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        if not from_checkpoint:
            self.check_best_metric()
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.scst:
            self.scst_generator = self.build_generator([model], Namespace(**self.scst_options()))
        return model

    def scst_options(self) -> dict:
        args = generation_options("--scst-args", self.cfg.scst_args)
        if int(args.get("beam", 5)) < 2:  # fairseq's default beam is 5
            raise ValueError(f"--scst-args={self.cfg.scst_args}: SCST needs a beam of at least 2, since each "
                             "caption's baseline is the mean reward of the image's other captions")
        return args

    def check_best_metric(self):
        """--best-checkpoint-metric cider / bleu without the flag that logs it would fail with a KeyError
        after the first validation."""
        checkpoint, dataset = section(self.cfg, "checkpoint"), section(self.cfg, "dataset")
        metric = checkpoint.get("best_checkpoint_metric") if checkpoint is not None else None
        if dataset is not None and dataset.get("disable_validation"):
            return
        flag = {"cider": "eval_cider", "bleu": "eval_bleu"}.get(metric)
        if flag and not self.cfg[flag]:
            raise ValueError(f"--best-checkpoint-metric={metric} needs --{flag.replace('_', '-')}: validation "
                             f"logs {metric} only with it")

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.cfg.scst and not getattr(criterion, "self_critical", False):
            raise ValueError(f"--scst trains with --criterion scst_reward_criterion (got {cfg._name}); "
                             "for cross-entropy training (OFA's stage 1) leave out --scst")
        return criterion

    @property
    def text_tokens(self) -> torch.Tensor:
        """Captions are text: no <mask>, image-code or location tokens (a bool mask over the dictionary)."""
        return torch.arange(len(self.dictionary)) < self.dictionary.index("<mask>")

    def build_generator(self, models, args, **kwargs):
        return super().build_generator(self.restrict(models, self.text_tokens), args, **kwargs)

    def next_token_rule(self, source, generation):
        blocked, n = ~self.text_tokens, generation.get("no_repeat_ngram_size", 0)

        def rule(tokens, lprobs):
            lprobs.masked_fill_(blocked, -float("inf"))
            if n:
                block_repeated_ngrams(tokens[None], lprobs, n)
        return rule

    # --- rewards and scores -----------------------------------------------------------------------
    def scst_rewards(self, captions: List[List[str]], refs: List[List[str]]) -> List[List[float]]:
        """CIDEr-D of each image's generated captions against its references, over the document frequencies
        of the training references (what OFA's coco-train-words.p holds for COCO)."""
        cider = self.scst_cider
        if not cider.num_images:
            if not self._warned_batch_df:
                self._warned_batch_df = True
                logger.warning("no training references were counted (the training split was not loaded with "
                               "--scst): the SCST reward takes document frequencies from each batch's references")
            cider = CiderD()
            for rs in refs:
                cider.add_image([scst_words(r) for r in rs])
        out = []
        for caps, rs in zip(captions, refs):
            ref_words = [scst_words(r) for r in rs]
            out.append([cider.score(scst_words(c), ref_words) for c in caps])
        return out

    def batch_scores(self, hyps, sample):
        # Validation CIDEr over the batch as the corpus, with the Java-free tokenizer (no JVM per batch),
        # as OFA averages per-batch CIDEr; fairseq-generate's ofa_caption scorer reports the official one.
        refs = [[simple_tokenize(r) for r in rs] for rs in sample["refs"]]
        hyps = [simple_tokenize(h) for h in hyps]
        if self.cfg.eval_bleu:
            # BLEU is a corpus score: its counts travel to reduce_metrics (valid_step adds them to the logging
            # output, which OFATask.valid_step builds around this call), not a per-caption score
            self._batch_bleu = {k: 0 for k in BLEU_KEYS}
            for h, rs in zip(hyps, refs):
                for k, v in bleu_stats(h, rs).items():
                    self._batch_bleu[k] += v
        if not self.cfg.eval_cider:
            return []
        from pycocoevalcap.cider.cider import Cider

        _, per = Cider().compute_score(dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)})
        return [float(s) for s in per]

    def valid_step(self, sample, model, criterion, **extra):
        self._batch_bleu = None
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion, **extra)
        if self._batch_bleu is not None:
            logging_output.update({f"_bleu_{k}": v for k, v in self._batch_bleu.items()})
            self._batch_bleu = None
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not any("_bleu_testlen" in log for log in logging_outputs):
            return
        for k in BLEU_KEYS:
            metrics.log_scalar(f"_bleu_{k}", sum(log.get(f"_bleu_{k}", 0) for log in logging_outputs))
        metrics.log_derived("bleu", lambda m: round(bleu4_from_stats({k: m[f"_bleu_{k}"].sum for k in BLEU_KEYS}), 4))
