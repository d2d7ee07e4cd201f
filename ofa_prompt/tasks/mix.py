"""Multi-task pretraining (`--task mix`): several of the tasks' TSVs read by their own tasks over one
dictionary and shuffled together, so that every batch mixes captioning, VQA, grounding and entailment
rows, as in OFA's pretraining. The demo's micro backbone learns the synthetic pretraining mix with it
before prompt tuning.

    fairseq-train DATA_FOLDER --task mix --mix-tasks '{"caption": {"data": "cap_train.tsv,cap_valid.tsv"},
        "vqa_gen": {"data": "vqa_train.tsv,vqa_valid.tsv", "ans2label_file": "answers.txt"}}' ...

Each task's entry holds that task's own options (its `data` relative to DATA_FOLDER, `selected_cols`,
`add_caption`, ...); validation reads every task's evaluation file and logs the loss."""
import json
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY, register_task
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data.dataset import MixDataset, training_seed
from .base import OFATask
from .options import OFATaskConfig
from .saved_settings import SHARED

# the mix's values are every task's defaults, which an entry may change
INHERITED = ("max_src_length", "max_tgt_length", "max_image_size", "skip_bad_rows", "decoded_image_cache",
             "decoded_image_cache_mb")


@dataclass
class MixConfig(OFATaskConfig):
    data: Optional[str] = field(default=None, metadata={
        "help": "the folder that relative paths in --mix-tasks are relative to"})
    mix_tasks: str = field(default="{}", metadata={
        "help": 'the mixed tasks and their options, as JSON: {"caption": {"data": "train.tsv,valid.tsv"}, '
                '"vqa_gen": {"data": ..., "ans2label_file": ...}, ...}; "data" follows each task\'s convention '
                "(training files, then the evaluation file)"})


def task_config(name: str, options, mix_cfg):
    """The configuration of mixed task `name`: its defaults, the mix's shared and inherited values, then
    its own `options`, type-checked as fairseq would check them on the command line."""
    where = f"--mix-tasks {name}"
    mixable = sorted(n for n, t in TASK_REGISTRY.items() if issubclass(t, OFATask) and n != "mix")
    if name not in mixable:
        raise ValueError(f"{where}: not a task that can be mixed (one of {', '.join(mixable)})")
    if not isinstance(options, dict):
        raise ValueError(f"{where}: expected a mapping of the task's options, got {options!r}")
    dataclass_ = TASK_DATACLASS_REGISTRY[name]
    known = {f.name for f in fields(dataclass_)}
    own = {}
    for key, value in options.items():
        k = key.replace("-", "_")
        if k not in known:
            raise ValueError(f"{where}: '{key}' is not an option of --task {name}")
        if k in SHARED:
            raise ValueError(f"{where}: '{key}' is shared by the mixed tasks (one dictionary, one image size): "
                             f"set --{k.replace('_', '-')} for the mix")
        own[k] = value
    if name == "vqa_gen":
        # mixed batches carry no per-row constraint masks: VQA rows train open-ended, as in OFA's pretraining
        if own.get("unconstrained_training") is False:
            raise ValueError(f"{where}: constrained VQA training (OFA's answer trie) is not applied to mixed "
                             "batches; leave 'unconstrained_training' out: mixed VQA rows train open-ended, as "
                             "in OFA's pretraining")
        own["unconstrained_training"] = True
    if not own.get("data"):
        raise ValueError(f"{where}: 'data' is required (the task's training TSV(s), then its evaluation TSV)")
    folder = mix_cfg.data or "."
    own["data"] = ",".join(os.path.join(folder, p) for p in str(own["data"]).split(","))
    values = {k: getattr(mix_cfg, k) for k in (*SHARED, *INHERITED)}
    values["seed"] = training_seed(mix_cfg)  # the mixed task's own config has no fairseq common section
    try:
        return OmegaConf.merge(OmegaConf.structured(dataclass_), {**values, **own})
    except OmegaConfBaseException as e:
        raise ValueError(f"{where}: '{e.full_key}': {e.msg}") from e


@register_task("mix", dataclass=MixConfig)
class MixTask(OFATask):
    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        if cfg.selected_cols:
            raise ValueError(f"--selected-cols={cfg.selected_cols}: give each task of --task mix its own "
                             "selected_cols in --mix-tasks")
        if cfg.image_feature_cache != "none":
            raise ValueError("--image-feature-cache is not applied to --task mix (pretraining trains the ResNet); "
                             "leave it out")
        try:
            mixed = json.loads(cfg.mix_tasks)
        except json.JSONDecodeError as e:
            raise ValueError(f"--mix-tasks is not JSON: {e}") from e
        if not isinstance(mixed, dict) or not mixed:
            raise ValueError('--mix-tasks: name at least one task, e.g. {"caption": {"data": "train.tsv,valid.tsv"}}')
        self.tasks = {}
        for name, options in mixed.items():
            sub_cfg = task_config(name, options, cfg)
            if sub_cfg.decoded_image_cache == "disk":  # the mixed tasks' files would share one name in --save-dir
                raise ValueError(f"--decoded-image-cache disk is not applied to --task mix ({name}): use memory")
            try:
                self.tasks[name] = TASK_REGISTRY[name](sub_cfg, dictionary)
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"--mix-tasks {name}: {e}") from e

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        for task in self.tasks.values():
            task.load_dataset(split, epoch)
        self.datasets[split] = MixDataset([task.datasets[split] for task in self.tasks.values()])

    def has_sharded_data(self, split):
        return any(task.has_sharded_data(split) for task in self.tasks.values())

    def build_generator(self, models, args, **kwargs):
        raise ValueError("--task mix trains a backbone; generate and score with each task's own --task")
