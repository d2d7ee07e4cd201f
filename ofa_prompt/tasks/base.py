"""What OFA's downstream tasks share: dictionary, text and image processing, TSV datasets, validation
by generation, and the per-sample records the `ofa_*` scorers read in fairseq-generate."""
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import sys
from argparse import Namespace
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from fairseq import metrics
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.sequence_generator import EnsembleModel
from fairseq.tasks import TASK_REGISTRY, FairseqTask
from omegaconf import II, DictConfig, OmegaConf, open_dict
from PIL import Image

from ..checkpoint import check_resume_file, claim_save_dir
from ..data.dataset import OFADataset
from ..data.decoded_images import DecodedImage, DecodedImageStore
from ..data.dictionary import build_ofa_dictionary
from ..data.image import CachedImage, decode_image, image_size_of, normalized, to_tensor
from ..data.tokenize import TOKENIZERS, build_tokenizer, clean_text
from ..data.tsv import TSVReader
from ..errors import InputError
from ..fairseq_compat import bf16_without_tpu, stop_after_update_on_sigint, stop_after_update_on_sigterm
from ..file_version import check_unchanged, file_version
from ..metrics.records import RECORDER
from ..metrics.scorers import use_task_scorer
from ..models.image_cache import ImageFeatureCache, capacity_line
from ..models.prompt_init import PROMPT_INITS
from ..models.resnet import ResNet
from ..models.tuning import prepare_for_training
from ..ngram_blocking import use_working_ngram_blocker
from ..per_sample_search import Rule
from ..prompt_file import attach_prompts, load_prompt_file
from ..schedule import default_total_updates, plan_lr_schedule
from ..version import __version__
from . import ema  # noqa: F401  (fairseq-train's --store-ema, which --uses-ema validates with, on OFA models)
from .saved_settings import SettingsError, apply_saved_settings, explicit_keys

logger = logging.getLogger(__name__)

# OFA's --prompt-type: also feed the source to the decoder (src: with eos, prev_output: without)
# the logging-output key a criterion sets to 1 for a batch whose loss was NaN/inf and was left out: an
# update whose batches were all left out skips optimizer.step() (train_step)
NONFINITE = "nonfinite"
DECODER_PROMPT_TYPES = ChoiceEnum(["none", "src", "prev_output"])


@dataclass
class OFATaskConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={
        "help": "comma-separated TSV files: training epochs cycle through all but the last, other splits read the "
                "last"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "TSV columns to read, in the task's order"})
    # fairseq's --seed: what a training sample draws at random (a caption's reference) is seeded by it, the
    # epoch and the row, so that a run repeats exactly (fairseq leaves an interpolated field off the parser)
    seed: int = II("common.seed")
    bpe_dir: Optional[str] = field(
        default=None, metadata={"help": "folder with dict.txt (and encoder.json, vocab.bpe for gpt2)"})
    text_tokenizer: ChoiceEnum(TOKENIZERS) = field(default="gpt2", metadata={
        "help": "gpt2: OFA's BPE; word: whitespace words listed in <bpe-dir>/dict.txt"})
    max_src_length: int = field(default=128, metadata={"help": "maximum source tokens"})
    max_tgt_length: int = field(default=30, metadata={"help": "maximum target tokens"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> image-code tokens"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location tokens"})
    patch_image_size: int = field(default=480, metadata={"help": "images are resized to this square size"})
    max_image_size: int = field(default=512, metadata={"help": "coordinate range the location bins cover"})
    imagenet_default_mean_and_std: bool = field(
        default=False, metadata={"help": "ImageNet normalization instead of 0.5/0.5"})
    skip_bad_rows: bool = field(default=False, metadata={"help": "skip (and count) bad TSV rows instead of stopping"})
    image_feature_cache: ChoiceEnum(["none", "memory", "disk"]) = field(default="none", metadata={
        "help": "keep the frozen ResNet's features of each training and validation image (prompt tuning, adapters, "
                "BitFit; refused for finetuning), so that later epochs look them up instead of computing them: "
                "in memory, or in a memory-mapped file <save-dir>/image_features.npy"})
    image_feature_cache_mb: int = field(default=4096, metadata={
        "help": "the most --image-feature-cache may hold, in MB (at 480 px: 1.76 MB an image in float16, 3.5 MB in "
                "float32); further images are computed as usual"})
    image_feature_cache_dtype: ChoiceEnum(["float16", "float32"]) = field(default="float16", metadata={
        "help": "the type --image-feature-cache keeps features in: float16 (half the room; a step's loss moves by "
                "less than 1e-3 of itself) or float32 (cached steps equal uncached ones to the bit)"})
    decoded_image_cache: ChoiceEnum(["none", "memory", "disk"]) = field(default="none", metadata={
        "help": "keep each training row's image after its first decoding (resized, uint8), so that later epochs do not "
                "decode it again; any --tuning-method: in shared memory, or in a memory-mapped file "
                "<save-dir>/decoded_images.npy"})
    decoded_image_cache_mb: int = field(default=4096, metadata={
        "help": "the most --decoded-image-cache may hold per training file, in MB (0.66 MB an image at 480 px); the "
                "rows beyond it are decoded every epoch"})
    no_tsv_index: bool = field(default=False, metadata={
        "help": "check every TSV row at every start-up and keep no record of it; by default a record of the check is "
                "kept beside the file (.NAME.ofa-index.npz, else under ~/.cache/ofa_prompt), and later runs on the "
                "unchanged file with the same task options use it instead of checking again"})
    eval_args: str = field(default="{}", metadata={"help": 'generation options for validation, e.g. \'{"beam":5}\''})
    eval_print_samples: bool = field(default=False, metadata={"help": "log hypotheses and references in validation"})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "OFA's polynomial_decay warmup: this fraction of all updates, which fairseq-train counts from "
                "--max-epoch and the training data (as OFA's train.py does; the numbers are logged)"})
    uses_ema: bool = field(default=False, metadata={
        "help": "with --store-ema, validation generates (and scores) with the EMA model, as in OFA"})
    ema_eval: bool = field(default=False, metadata={
        "help": "fairseq-generate: evaluate the EMA weights each --path checkpoint saved (fairseq-train --store-ema), "
                "not its live ones, as OFA's evaluate.py --ema-eval; a checkpoint without EMA weights is an error"})
    prompt_file: Optional[str] = field(default=None, metadata={
        "help": "fairseq-generate: evaluate the prompts of this exported prompt file (python -m ofa_prompt.prompt_file "
                "export) on the --path backbone; the task settings the file records apply as a checkpoint's do"})
    zero_shot: bool = field(default=False, metadata={
        "help": "refused: OFA's evaluate.py --zero-shot generates without the task's answer constraints, which is not "
                "implemented; without it a pretrained checkpoint is evaluated with the task's own inference"})


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
        self.image_cache = None  # --image-feature-cache: the model's, once attached (attach_image_cache)
        self._ema_generator = None  # (EMA model, its validation generator), built at the first validation
        self._warned_truncation = False
        # batches of the current update whose loss was finite (the criterion marks the others NONFINITE)
        self._finite_batches = 0
        self._prepared_for_training = False
        self._checkpoints_built = 0  # models built from --path checkpoints so far
        # (path, version) of the --path checkpoints whose task settings were taken (setup_task, fairseq-generate)
        self.checkpoint_versions = []
        self.prompt_file_version = None
        self._warned_target_cut = False
        self._warned_ema = False
        self._readers = {}  # (path, columns) -> TSVReader
        self._decoded_stores = {}  # (path, columns) -> DecodedImageStore (--decoded-image-cache)

    def attach_image_cache(self, model):
        """--image-feature-cache: valid only while the ResNet is frozen (OFAModel.train keeps it in eval mode then)
        and the images are preprocessed the same way every epoch (OFATask.image has no random augmentation)."""
        resnet = model.encoder.embed_images
        if model.tuning == "finetune" or any(p.requires_grad for p in resnet.parameters()):
            raise SettingsError(f"--image-feature-cache keeps the ResNet's features, which are the same every epoch "
                                f"only while the ResNet is frozen (prompt tuning, adapters, BitFit); --tuning-method "
                                f"{model.tuning} trains it: leave the cache out")
        path = self.save_dir_file("image_features.npy") if self.cfg.image_feature_cache == "disk" else None
        model.encoder.image_cache = self.image_cache = ImageFeatureCache(
            self.cfg.image_feature_cache_mb, path, str(self.cfg.image_feature_cache_dtype))

    def save_dir_file(self, name: str) -> str:
        """`name` in fairseq-train's --save-dir (the working directory outside fairseq-train)."""
        root = self.cfg._get_root() if isinstance(self.cfg, DictConfig) else None
        save_dir = root.checkpoint.save_dir if root is not None and "checkpoint" in root else "."
        return os.path.join(save_dir, name)

    def decoded_images(self, path: str, cols: tuple, rows: int) -> Optional[DecodedImageStore]:
        """--decoded-image-cache: the store of a training file's decoded images, one per file for the whole run
        (fairseq reloads the training split every epoch when --data lists several files)."""
        if self.cfg.decoded_image_cache == "none":
            return None
        if (path, cols) not in self._decoded_stores:
            file = None
            if self.cfg.decoded_image_cache == "disk":
                file = self.save_dir_file(f"decoded_images_{len(self._decoded_stores)}.npy" if self._decoded_stores
                                          else "decoded_images.npy")
            self._decoded_stores[path, cols] = DecodedImageStore(rows, self.cfg.patch_image_size,
                                                                 self.cfg.decoded_image_cache_mb, file)
        return self._decoded_stores[path, cols]

    def image_key(self, cols) -> torch.Tensor:
        """[2] int64: a digest of a row's image (column 1 of every task's row) and of how the task preprocesses
        it, naming its features in --image-feature-cache."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps([self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std]).encode())
        digest.update(cols[1].encode() if isinstance(cols[1], str) else bytes(cols[1]))
        return torch.from_numpy(np.frombuffer(digest.digest(), dtype=np.int64).copy())

    def attach_prompt_file(self, model, backbone: Optional[str]):
        """--prompt-file: its prompts on a --path model built from `backbone` (whose weights fairseq loads next;
        the prompts are not among them)."""
        path = self.cfg.prompt_file
        if model.encoder.prompts is not None or model.decoder.prompts is not None:
            raise SettingsError(f"--prompt-file {path} brings the prompts, but the --path checkpoint {backbone} has "
                                "its own: give --path the backbone they were tuned on (e.g. ofa_base.pt)")
        check_unchanged(path, self.prompt_file_version, file_version(path) if os.path.isfile(path) else None,
                        "between fairseq-generate's reading of its task settings and of its prompts")
        model.backbone_file = backbone
        try:
            attach_prompts(model, path, force_backbone=model.cfg.force_backbone, bpe_dir=self.cfg.bpe_dir)
        except ValueError as e:
            raise SettingsError(
                f"--prompt-file: {e} (fairseq-generate: --model-overrides \"{{'force_backbone': True}}\")"
                if "force_backbone" in str(e) else f"--prompt-file: {e}") from None
        logger.info("prompts from %s attached to the model of %s", path, backbone)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        default_total_updates(parser)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if cfg.zero_shot:
            raise ValueError("--zero-shot (OFA's unconstrained zero-shot generation) is not implemented: drop it; "
                             "fairseq-generate evaluates a pretrained checkpoint (ofa_large.pt) on this task with the "
                             "task's own inference (candidate answers, location bins), its settings from the command "
                             "line")
        versions, prompt_record = [], None
        if cfg.prompt_file:
            meta = load_prompt_file(cfg.prompt_file).record
            prompt_record = (cfg.prompt_file, meta.get("task"))
            if prompt_record[1] is not None and prompt_record[1]["name"] != cls.task_name():
                raise SettingsError(f"--prompt-file {cfg.prompt_file} holds prompts for --task "
                                    f"{prompt_record[1]['name']}, not --task {cls.task_name()}")
        if not kwargs.get("from_checkpoint"):  # fairseq-generate --path: the checkpoint's task settings
            versions = apply_saved_settings(cfg, cls, prompt_record=prompt_record)
        if not cfg.bpe_dir:
            raise ValueError(f"--bpe-dir is required by --task {cls.__name__}: the folder holding OFA's dict.txt "
                             "(fairseq-generate also takes bpe_dir from --model-overrides, as OFA's scripts pass it)")
        check_bpe_dir(cfg.bpe_dir, cfg.text_tokenizer)
        check_precision(cfg)
        dictionary = build_ofa_dictionary(os.path.join(cfg.bpe_dir, "dict.txt"), cfg.code_dict_size, cfg.num_bins)
        logger.info("dictionary: %d types", len(dictionary))
        _skip_valid_folder_check(cfg)
        # fairseq-generate without --scoring (OFA's command lines): the task's metric
        use_task_scorer(cfg, explicit_keys(sys.argv[1:]))
        task = cls(cfg, dictionary)
        task.checkpoint_versions = versions
        task.prompt_file_version = file_version(cfg.prompt_file) if cfg.prompt_file else None
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
        self.datasets[split] = OFADataset(reader, self, train=split == "train", decoded=decoded)

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

    def image(self, image):
        """(tensor, original width, original height) of a row's image: base64 text, or an RGB PIL image
        (the Python API's, ofa_prompt.predictor)."""
        if isinstance(image, CachedImage):  # the model looks its features up: the pixels are never read
            size = self.cfg.patch_image_size
            return torch.zeros(3, size, size), image.width, image.height
        if isinstance(image, DecodedImage):  # --decoded-image-cache
            return normalized(image.pixels, self.cfg.imagenet_default_mean_and_std), image.width, image.height
        img = image if isinstance(image, Image.Image) else decode_image(image)
        return to_tensor(img, self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std), img.width, img.height

    @staticmethod
    def check_image(b64: str):
        return image_size_of(b64)

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
        if not from_checkpoint:  # fairseq-train, before its Trainer is built and loads a checkpoint
            if self.cfg.prompt_file:
                raise SettingsError("--prompt-file is for fairseq-generate (evaluating a prompt file on a backbone); "
                                    "training starts from --finetune-from-model / --restore-file")
            ema.refuse_ema_eval(self.cfg)
            claim_save_dir(cfg)
            check_resume_file(cfg)
            bf16_without_tpu(cfg)
            if isinstance(self.cfg, DictConfig):  # fairseq-train's whole configuration is its root
                plan_lr_schedule(self, self.cfg._get_root())
                stop_after_update_on_sigterm(self.cfg._get_root())
                stop_after_update_on_sigint(self.cfg._get_root())
        if from_checkpoint:
            # fairseq builds the models of --path in order, each after reading its checkpoint (its weights are
            # loaded next): the file must be the version whose settings this task took
            index, self._checkpoints_built = self._checkpoints_built, self._checkpoints_built + 1
            if index < len(self.checkpoint_versions):
                path, version = self.checkpoint_versions[index]
                check_unchanged(path, version, file_version(path) if os.path.isfile(path) else None,
                                "between fairseq-generate's reading of its task settings and of its weights")
        model = super().build_model(cfg, from_checkpoint)
        if from_checkpoint:  # what fairseq loads next is the --path file, not the one its training started from
            model.start_file = self.checkpoint_versions[index][0] if index < len(self.checkpoint_versions) else None
        if not from_checkpoint and self.cfg.image_feature_cache != "none":
            self.attach_image_cache(model)
        if from_checkpoint and self.cfg.prompt_file:
            self.attach_prompt_file(model, self.checkpoint_versions[index][0] if index < len(self.checkpoint_versions)
                                    else None)
        if from_checkpoint and getattr(self.cfg, "ema_eval", False):
            ema.evaluate_ema_of(model, ema.generate_checkpoint(self.cfg, self._checkpoints_built - 1))
        if self.eval_enabled():
            gen_args = generation_options("--eval-args", self.cfg.eval_args)
            self.valid_generator = self.build_generator([model], Namespace(**gen_args))
        return model

    def begin_epoch(self, epoch, model):
        # fairseq-train calls this at the start of every epoch, after loading the checkpoint: the first call
        # of a run prepares the model for training (freeze, --prompt-init, the trainable share)
        super().begin_epoch(epoch, model)
        if not self._prepared_for_training:
            inner = getattr(model, "module", model)
            start = inner.cfg.prompt_init
            prompt_file = None
            if start not in PROMPT_INITS and inner.fresh_prompts:
                if not os.path.isfile(start):
                    raise SettingsError(f"--prompt-init={start}: neither one of {', '.join(PROMPT_INITS)} nor a prompt "
                                        "file (python -m ofa_prompt.prompt_file export)")
                prompt_file = load_prompt_file(start).tensors
            prepare_for_training(inner, prompt_file)
            self._prepared_for_training = True
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


class AllowedTokens(EnsembleModel):
    """An ensemble whose next-token distribution is restricted to a fixed set of tokens."""

    def __init__(self, models, allowed: torch.Tensor):
        super().__init__(models)
        self.register_buffer("blocked", ~allowed)

    def forward_decoder(self, *args, **kwargs):
        lprobs, attn = super().forward_decoder(*args, **kwargs)
        return lprobs.masked_fill(self.blocked.to(lprobs.device), -float("inf")), attn


def generation_options(option: str, text: str) -> dict:
    """The generator options a JSON option holds (--eval-args, --scst-args)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option}={text!r} is not JSON: {e}")
    if not isinstance(options, dict):
        raise ValueError(f"{option}={text!r}: expected a JSON object like '{{\"beam\": 5}}'")
    return options


def check_bpe_dir(bpe_dir: str, tokenizer: str):
    """--bpe-dir must hold what the dictionary and the tokenizer read, before anything is built from it."""
    needed = ("dict.txt", "encoder.json", "vocab.bpe") if tokenizer == "gpt2" else ("dict.txt",)
    remedy = f"give the folder holding OFA's {', '.join(needed)} (OFA's utils/BPE)"
    if not os.path.isdir(bpe_dir):
        raise SettingsError(f"--bpe-dir {bpe_dir}: no such folder; {remedy}")
    missing = [name for name in needed if not os.path.isfile(os.path.join(bpe_dir, name))]
    if missing:
        words = "; a word vocabulary needs only dict.txt (--text-tokenizer word)" if tokenizer == "gpt2" else ""
        raise SettingsError(f"--bpe-dir {bpe_dir} has no {', '.join(missing)}: {remedy}{words}")


def check_precision(task_cfg):
    """--fp16 (the paper configurations' default) needs a CUDA GPU: without one fairseq-train fails after building
    the model ("Found no NVIDIA driver"), and fairseq-generate with --cpu on the first batch (a FloatTensor input to
    a half model). Refused here, at the task's set-up, which both run before anything else. fairseq-train with
    --cpu keeps fairseq's own mixed precision on the CPU (float32 master weights), which works."""
    root = task_cfg._get_root() if isinstance(task_cfg, DictConfig) else None
    common = root.get("common") if root is not None and "common" in root else None
    if common is None or not (common.get("fp16") or common.get("memory_efficient_fp16")):
        return
    flag = "--fp16" if common.get("fp16") else "--memory-efficient-fp16"
    generating = "common_eval" in root and bool(root.common_eval.get("path"))
    if common.get("cpu") and generating:
        where = "and fairseq-generate with --cpu halves the model but not its inputs"
    elif not common.get("cpu") and not torch.cuda.is_available():
        where = "and torch finds no CUDA GPU here"
    else:
        return
    raise SettingsError(f"{flag} runs in half precision on a CUDA GPU, {where}: leave it out (a YAML configuration "
                        f"of scripts/train.sh or evaluate.sh: the override {flag[2:]}=false) and run with --cpu, or "
                        "compute in bfloat16 on the CPU with --autocast bf16 (fairseq-generate: --model-overrides "
                        "\"{'autocast': 'bf16'}\")")


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


def _skip_valid_folder_check(task_cfg):
    """--data names TSV files, not a folder of binarized splits: fairseq-train's check for unused
    valid* files in that folder (which lists it as a directory) does not apply."""
    if not isinstance(task_cfg, DictConfig):
        return
    root = task_cfg._get_root()
    if "dataset" in root and root.dataset is not None:
        with open_dict(root):
            root.dataset.ignore_unused_valid_subsets = True


def score_candidates(model, sample, candidates: List[torch.Tensor], task, prefixes=None, chunk: int = 64):
    """OFA's all-candidate inference: the log-likelihood of every candidate answer for every sample
    (teacher-forced, one encoder pass). Returns [B, C] summed log-probabilities."""
    net = sample["net_input"]
    enc = model.encoder(net["src_tokens"], net["src_lengths"], patch_images=net["patch_images"],
                        patch_masks=net["patch_masks"], token_embeddings=net.get("token_embeddings"))
    bsz, pad = net["src_tokens"].size(0), task.dictionary.pad()
    out = torch.full((bsz, len(candidates)), -math.inf)
    pairs = [(b, c) for b in range(bsz) for c in range(len(candidates))]
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        ios = [task.decoder_io(candidates[c], None if prefixes is None else prefixes[b]) for b, c in part]
        prev = torch.nn.utils.rnn.pad_sequence([p for p, _ in ios], batch_first=True, padding_value=pad)
        target = torch.nn.utils.rnn.pad_sequence([t for _, t in ios], batch_first=True, padding_value=pad)
        rows = torch.tensor([b for b, _ in part], device=prev.device)
        logits, _ = model.decoder(prev.to(rows.device), encoder_out=model.encoder.reorder_encoder_out(enc, rows))
        lprobs = torch.log_softmax(logits.float(), -1)
        mask = target.ne(pad)
        picked = lprobs.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1) * mask
        for (b, c), s in zip(part, picked.sum(1).tolist()):
            out[b, c] = s
    return out


def as_hypotheses(best: torch.Tensor, scores: torch.Tensor, candidates: List[torch.Tensor], eos: int):
    """fairseq-generate's hypothesis format for a chosen candidate per sample."""
    hypos = []
    for b, c in enumerate(best.tolist()):
        tokens = torch.cat([candidates[c], torch.tensor([eos])])
        hypos.append([{"tokens": tokens, "score": scores[b, c], "alignment": None,
                       "positional_scores": torch.full((len(tokens),), float(scores[b, c]) / len(tokens))}])
    return hypos
