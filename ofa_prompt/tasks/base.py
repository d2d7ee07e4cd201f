"""What OFA's downstream tasks share: the task builds samples (dictionary, text and image processing, TSV
datasets), models and generators, validates by generation, and records per sample what the `ofa_*` scorers read
in fairseq-generate. Its options are in `options`; the start-up of a run around it (fairseq-train's checks and
hooks, fairseq-generate's --path settings and attachments) in `run_setup`; constrained generation and candidate
scoring in `candidates`."""
import functools
import inspect
import json
import logging
import os
from argparse import Namespace
from typing import List, Optional

import torch
from fairseq import metrics
from fairseq.sequence_generator import EnsembleModel
from fairseq.tasks import TASK_REGISTRY, FairseqTask
from omegaconf import DictConfig, OmegaConf

from ..data.dataset import FeatureLookup, OFADataset, training_seed
from ..data.decoded_images import DecodedImageStore
from ..data.dictionary import build_ofa_dictionary
from ..data.image import ImageSettings
from ..data.tokenize import build_tokenizer, clean_text
from ..data.tsv import TSVReader
from ..errors import InputError
from ..fairseq_compat.config import save_dir
from ..metrics.records import RECORDER
from ..models.image_cache import capacity_line
from ..models.resnet import ResNet
from ..ngram_blocking import use_working_ngram_blocker
from ..per_sample_search import Rule
from ..schedule import default_total_updates
from ..version import __version__
from .candidates import AllowedTokens, as_hypotheses, generation_options, score_candidates
from .run_setup import RunStart, build_for_run, configure_run, prepare_for_first_epoch

logger = logging.getLogger(__name__)

# the logging-output key a criterion sets to 1 for a batch whose loss was NaN/inf and was left out: an
# update whose batches were all left out skips optimizer.step() (train_step)
NONFINITE = "nonfinite"


class OFATask(FairseqTask):
    """Subclasses define: default_cols, instruction/sample building (`build_sample`), `check_row`,
    `sample_score` and, where OFA constrains generation, `generate`."""

    default_cols = "0,1,2"
    metric = "score"  # the name --best-checkpoint-metric uses
    ofa_metric = None  # OFA's name for the same score, where it differs (logged too)
    eval_flag = "eval_acc"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.tokenizer = build_tokenizer(cfg.text_tokenizer, cfg.bpe_dir)
        self.bos, self.eos = torch.tensor([dictionary.bos()]), torch.tensor([dictionary.eos()])
        self.valid_generator = None
        self.image_cache = None  # --image-feature-cache: the model's, once attached (run_setup.attach_image_cache)
        self.start = RunStart()  # what setup_task read for the run (run_setup.configure_run)
        self._ema_generator = None  # (EMA model, its validation generator), built at the first validation
        self._warned_truncation = False
        # batches of the current update whose loss was finite (the criterion marks the others NONFINITE)
        self._finite_batches = 0
        self._warned_target_cut = False
        self._warned_ema = False
        self._readers = {}  # (path, columns) -> TSVReader
        self._decoded_stores = {}  # (path, columns) -> DecodedImageStore (--decoded-image-cache)

    def decoded_images(self, path: str, cols: tuple, rows: int) -> Optional[DecodedImageStore]:
        """--decoded-image-cache: the store of a training file's decoded images, one per file for the whole run
        (fairseq reloads the training split every epoch when --data lists several files)."""
        if self.cfg.decoded_image_cache == "none":
            return None
        if (path, cols) not in self._decoded_stores:
            file = None
            if self.cfg.decoded_image_cache == "disk":
                file = os.path.join(save_dir(self.cfg), f"decoded_images_{len(self._decoded_stores)}.npy"
                                    if self._decoded_stores else "decoded_images.npy")
            self._decoded_stores[path, cols] = DecodedImageStore(rows, self.cfg.patch_image_size,
                                                                 self.cfg.decoded_image_cache_mb, file)
        return self._decoded_stores[path, cols]

    def features_kept(self, key: torch.Tensor) -> bool:
        """Whether the model's --image-feature-cache (once attached) keeps the features of the image named `key`."""
        return self.image_cache is not None and key in self.image_cache

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        default_total_updates(parser)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        start = configure_run(cfg, cls, kwargs.get("from_checkpoint", False))
        dictionary = build_ofa_dictionary(os.path.join(cfg.bpe_dir, "dict.txt"), cfg.code_dict_size, cfg.num_bins)
        logger.info("dictionary: %d types", len(dictionary))
        task = cls(cfg, dictionary)
        task.start = start
        return task

    @classmethod
    def task_name(cls) -> str:
        """The name this task is registered under (--task)."""
        return next(name for name, task_cls in TASK_REGISTRY.items() if task_cls is cls)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return 1024, 1024

    # --- data -------------------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if not self.cfg.data:
            raise ValueError("--data (or the positional data argument) must name the TSV file(s)")
        train_files, eval_file = data_files(self.cfg.data)
        path = train_files[(epoch - 1) % len(train_files)] if split == "train" else eval_file
        text = self.cfg.selected_cols or self.default_cols
        cols = [int(c) for c in text.split(",") if c.strip().isdigit()]
        if len(cols) != len(self.default_cols.split(",")) or len(cols) != len(text.split(",")):
            raise ValueError(f"--selected-cols={text}: {type(self).__name__} reads "
                             f"{len(self.default_cols.split(','))} column numbers ({self.column_names})")
        reader = self._readers.get((path, tuple(cols)))
        self.row_stats = {}  # what check_row counts over the file being read
        if reader is None:  # each file is read and checked once, however many epochs (or plans) use it
            key = None if self.cfg.no_tsv_index else self.row_check_key(cols)
            reader = self._readers[path, tuple(cols)] = TSVReader(path, cols, self.check_row, self.cfg.skip_bad_rows,
                                                                  key, self.row_stats)
            logger.info("%s: %d rows from %s (epoch %d)", split, len(reader), path, epoch)
            if split == "train" and self.image_cache is not None:
                side = -(-self.cfg.patch_image_size // ResNet.stride)
                logger.info(capacity_line(self.cfg.image_feature_cache_mb, str(self.cfg.image_feature_cache_dtype),
                                          (ResNet.out_channels, side, side), len(reader)))
        decoded = self.decoded_images(path, tuple(cols), len(reader)) if split == "train" else None
        features = (FeatureLookup(self.image_settings, self.features_kept) if self.cfg.image_feature_cache != "none"
                    else None)
        self.datasets[split] = OFADataset(
            reader, self.build_sample, train=split == "train", pad=self.dictionary.pad(), seed=training_seed(self.cfg),
            max_src_length=self.cfg.max_src_length, max_tgt_length=self.cfg.max_tgt_length, features=features,
            decoded=decoded)

    def row_check_key(self, cols: List[int]) -> str:
        """What decides the outcome of checking a file's rows (ofa_prompt.data.row_index): the task, the columns
        read, every task option but the file list, and the plugin's version (whose checks may change)."""
        options = (OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True) if isinstance(self.cfg, DictConfig)
                   else dict(vars(self.cfg)))
        options.pop("data", None)
        options.pop("seed", None)  # the rows' checks do not depend on it
        return json.dumps({"task": self.task_name(), "cols": cols, "options": options, "plugin": __version__},
                          sort_keys=True, default=str)

    def training_rows(self, max_epoch: int) -> List[int]:
        """The number of training rows of each epoch 1..max_epoch (epochs cycle through the files)."""
        rows = []
        for epoch in range(1, max_epoch + 1):
            self.load_dataset("train", epoch=epoch)
            rows.append(len(self.datasets["train"]))
        return rows

    def has_sharded_data(self, split):
        # fairseq-train reloads the training set at each epoch only for sharded data: without this, the
        # training files after the first would never be read
        return split == "train" and bool(self.cfg.data) and len(data_files(self.cfg.data)[0]) > 1

    def encode(self, text: str, max_tokens: Optional[int] = None) -> torch.Tensor:
        ids = self.dictionary.encode_line(self.tokenizer.encode(text), add_if_not_exist=False, append_eos=False).long()
        if not max_tokens or len(ids) <= max_tokens:
            return ids
        self.warn_target_cut(len(ids), "tokens", max_tokens, text)
        return ids[:self.tokenizer.whole_characters([self.dictionary[i] for i in ids], max_tokens)]

    def target_words(self, text: str) -> str:
        """OFA's target pre-processing: the cleaned text's first --max-tgt-length words."""
        words = clean_text(text).split()
        if len(words) > self.cfg.max_tgt_length:
            self.warn_target_cut(len(words), "words", self.cfg.max_tgt_length, text)
        return " ".join(words[:self.cfg.max_tgt_length])

    def warn_target_cut(self, count: int, unit: str, limit: int, text: str):
        if not self._warned_target_cut:  # say so once, as for sources
            self._warned_target_cut = True
            logger.warning("a target of %d %s was cut to --max-tgt-length=%d (and maybe others): %r", count, unit,
                           limit, text[:200])

    def source(self, instruction: str) -> torch.Tensor:
        ids = self.encode(instruction)
        if len(ids) > self.cfg.max_src_length and not self._warned_truncation:
            # the end of an instruction is often what matters (snli_ve's hypothesis): say so once
            self._warned_truncation = True
            logger.warning("a source of %d tokens was cut to --max-src-length=%d (and maybe others): %r",
                           len(ids), self.cfg.max_src_length, instruction)
        return torch.cat([self.bos, ids[:self.cfg.max_src_length], self.eos])

    @property
    def image_settings(self) -> ImageSettings:
        """How this task preprocesses images (ofa_prompt.data.image.load_image)."""
        return ImageSettings(self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std)

    @staticmethod
    def check_text(text: str, what: str):
        if not text.strip():
            raise ValueError(f"empty {what}")

    def decoder_io(self, answer: torch.Tensor, prefix: Optional[torch.Tensor] = None):
        """(prev_output_tokens, target) for an answer, with an optional decoder prefix (OFA's
        --prompt-type prev_output) whose positions are not scored."""
        prefix = self.bos if prefix is None else prefix
        prev = torch.cat([prefix, answer])
        target = torch.cat([torch.full((len(prefix) - 1,), self.dictionary.pad()), answer, self.eos])
        return prev, target

    def decoder_prefix(self, source: torch.Tensor):
        kind = getattr(self.cfg, "prompt_type", "none")
        return {"none": None, "src": source, "prev_output": source[:-1]}[kind]

    # --- generation and scoring -------------------------------------------------------------------
    def build_generator(self, models, args, **kwargs):
        return use_working_ngram_blocker(super().build_generator(models, args, **kwargs))

    def build_bpe(self, args):
        return self.tokenizer  # fairseq-generate decodes hypotheses with it

    def build_tokenizer(self, args):
        return None

    def decode(self, tokens: torch.Tensor) -> str:
        tokens = tokens[(tokens != self.dictionary.eos()) & (tokens != self.dictionary.pad())]
        return self.tokenizer.decode(self.dictionary.string(tokens.int().cpu())).strip()

    def generate(self, generator, models, sample):
        """Hypotheses in fairseq's format (lists of dicts with tokens, score, ...). Decoding starts from
        bos, as in training and in OFA's generator (fairseq's own would start from eos)."""
        return generator.generate(models, sample, bos_token=self.dictionary.bos())

    @staticmethod
    def restrict(models, allowed: torch.Tensor):
        """`models` for fairseq's SequenceGenerator, generating only `allowed` tokens (a bool mask)."""
        return models if isinstance(models, EnsembleModel) else AllowedTokens(models, allowed)

    def choose_candidate(self, models, sample, candidates):
        """All-candidate inference (OFA's allcand): the most likely of `candidates` for every sample."""
        prefixes = None
        if getattr(self.cfg, "prompt_type", "none") != "none":
            pad = self.dictionary.pad()
            prefixes = [self.decoder_prefix(s[s.ne(pad)]) for s in sample["net_input"]["src_tokens"]]
        # OFA's --valid-batch-size (tasks with candidates define it): candidates per decoder pass, per sample
        chunk = len(sample["net_input"]["src_tokens"]) * self.cfg.valid_batch_size
        scores = score_candidates(models[0], sample, candidates, self, prefixes, chunk)
        return as_hypotheses(scores.argmax(1), scores, candidates, self.dictionary.eos())

    # --- batches that mix tasks (OFAPredictor.mixed): one beam search, each sample by its task's rules ------
    def next_token_rule(self, source: torch.Tensor, generation: dict) -> Optional[Rule]:
        """What this task's generator allows next, for one sample (unpadded `source`), as a per-sample rule of
        PerSampleBeamSearch; `generation`: the generator options. Tasks that score candidates have none."""
        raise InputError(f"--task {self.task_name()} chooses among candidates rather than searching, so it cannot "
                         "share a beam search with other tasks: run it on its own (OFAPredictor.entail, or answer "
                         "with candidates)")

    def answer_tokens(self, tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The answer part of a generated hypothesis (tasks with a decoder prefix drop it)."""
        return tokens

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        hypos = self.generate(generator, models, sample)
        for uid, ref, meta in zip(sample["uniq_ids"], sample["refs"], sample["metas"]):
            RECORDER.push(uid, ref, meta)
        return hypos

    def sample_score(self, hypothesis: str, reference, meta) -> float:
        raise NotImplementedError

    def batch_scores(self, hyps: List[str], sample) -> List[float]:
        return [self.sample_score(h, r, m) for h, r, m in zip(hyps, sample["refs"], sample["metas"])]

    # --- training and validation ------------------------------------------------------------------
    def eval_enabled(self) -> bool:
        return getattr(self.cfg, self.eval_flag, False)

    def build_model(self, cfg, from_checkpoint=False):
        model = build_for_run(self, cfg, from_checkpoint, functools.partial(super().build_model, cfg, from_checkpoint))
        if self.eval_enabled():
            gen_args = generation_options("--eval-args", self.cfg.eval_args)
            self.valid_generator = self.build_generator([model], Namespace(**gen_args))
        return model

    def begin_epoch(self, epoch, model):
        # fairseq-train calls this at the start of every epoch, after loading the checkpoint: the first call
        # of a run prepares the model for training (freeze, --prompt-init, the trainable share)
        super().begin_epoch(epoch, model)
        if not self.start.prepared:
            prepare_for_first_epoch(getattr(model, "module", model))
            self.start.prepared = True
        cache = getattr(model, "module", model).encoder.image_cache
        if cache is not None and epoch > 1:
            logger.info(cache.report())
        for (path, _), store in self._decoded_stores.items():
            if epoch > 1:
                logger.info("decoded image cache: %d of %d rows of %s kept", store.kept(), store.capacity, path)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **extra):
        # extra: fairseq's Trainer passes ema_model= too when --uses-ema; only validation uses it.
        # fairseq's train_step calls criterion(model, sample) without the update number, which OFA's criteria
        # take (--drop-worst-after): hand it to those that do.
        if "update_num" in inspect.signature(criterion.forward).parameters:
            criterion = functools.partial(criterion, update_num=update_num)
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad)
        if not ignore_grad:  # a dummy batch (uneven data-parallel shards) holds no data
            self._finite_batches += 1 - logging_output.get(NONFINITE, 0)
        return loss, sample_size, logging_output

    def optimizer_step(self, optimizer, model, update_num):
        """Skip the update when no batch of it (on any rank) had a finite loss: the criterion zeroed their
        gradients, but Adam would still move the parameters by its momentum and weight decay."""
        finite, self._finite_batches = self._finite_batches, 0
        if _sum_over_ranks(finite, model) == 0:
            logger.warning("update %d skipped: every batch of it had a non-finite loss", update_num + 1)
            return
        super().optimizer_step(optimizer, model, update_num)

    @property
    def uses_ema(self) -> bool:
        """With --store-ema too, fairseq's Trainer then passes its EMA model to train_step and valid_step."""
        return self.cfg.uses_ema

    def valid_step(self, sample, model, criterion, **extra):
        """The loss of the live model; hypotheses and their score from the EMA model under --uses-ema (OFA)."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.eval_enabled():
            eval_model = self.eval_model(model, extra.get("ema_model"))
            eval_model.eval()
            with torch.no_grad():
                hypos = self.generate(self.generator_of(eval_model, model), [eval_model], sample)
            hyps = [self.decode(h[0]["tokens"]) for h in hypos]
            scores = self.batch_scores(hyps, sample)
            logging_output["_score_sum"] = sum(scores)
            logging_output["_score_cnt"] = len(scores)
            if self.cfg.eval_print_samples:
                logger.info("example hypothesis: %s | reference: %s", hyps[0], sample["refs"][0])
        return loss, sample_size, logging_output

    def eval_model(self, model, ema_model):
        """The model validation generates with: the EMA model fairseq's Trainer passes, else the live one."""
        if ema_model is None and self.cfg.uses_ema and not self._warned_ema:
            self._warned_ema = True
            logger.warning("--uses-ema without --store-ema: validation generates with the live model")
        return model if ema_model is None else ema_model

    def generator_of(self, eval_model, model):
        """The validation generator of `eval_model`: the live model's, or one built once for the EMA model
        (fairseq's Trainer keeps a single EMA model and updates it in place)."""
        if eval_model is model:
            return self.valid_generator
        if self._ema_generator is None or self._ema_generator[0] is not eval_model:
            gen_args = Namespace(**generation_options("--eval-args", self.cfg.eval_args))
            self._ema_generator = (eval_model, self.build_generator([eval_model], gen_args))
        return self._ema_generator[1]

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        count = sum(log.get("_score_cnt", 0) for log in logging_outputs)
        if count > 0:
            metrics.log_scalar("_score_sum", sum(log.get("_score_sum", 0) for log in logging_outputs))
            metrics.log_scalar("_score_cnt", count)
            for name in self.metric_names():
                metrics.log_derived(name, lambda m: round(m["_score_sum"].sum / m["_score_cnt"].sum, 4))

    def metric_names(self) -> List[str]:
        """Our name of the validation score and OFA's, so that either --best-checkpoint-metric works."""
        return [self.metric] + ([self.ofa_metric] if self.ofa_metric not in (None, self.metric) else [])


def data_files(data: str):
    """(training files, evaluation file) of --data: epochs cycle through all files but the last, which the
    other splits read; a single file serves both."""
    paths = data.split(",")
    return paths[:-1] or paths, paths[-1]


def _sum_over_ranks(count: int, model) -> int:
    """`count` summed over data-parallel ranks, so that all of them take or skip an update together."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return count
    total = torch.tensor([count], dtype=torch.long, device=next(model.parameters()).device)
    torch.distributed.all_reduce(total)
    return int(total.item())
