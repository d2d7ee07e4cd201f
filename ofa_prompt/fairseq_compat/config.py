"""fairseq's whole configuration and the command line, read and written only here.

fairseq hands the task, the model and the criterion their own node of its configuration; what the plugin
needs from the rest (the checkpoint, common, evaluation and scheduler options) is in the root that node
belongs to, which only OmegaConf's private `_get_root()` reaches. Every reach and every write goes through
the named functions below, so that the one place that depends on that private call, and every change the
plugin makes to fairseq's configuration, is this module. Outside fairseq (the Python API's argparse
Namespace, a plain dataclass) there is no root: the readers return None and the writers do nothing.
"""
import os
import sys
from typing import List, Optional, Set

from omegaconf import DictConfig, OmegaConf, open_dict


# --- reading ----------------------------------------------------------------------------------------------
def root_of(cfg) -> Optional[DictConfig]:
    """The whole configuration (fairseq-train's or fairseq-generate's) that node `cfg` belongs to."""
    return cfg._get_root() if isinstance(cfg, DictConfig) else None


def section(cfg, name: str):
    """The `name` group (checkpoint, common, common_eval, dataset, ...) of the configuration `cfg` belongs to."""
    root = root_of(cfg)
    return root.get(name) if root is not None and name in root else None


def save_dir(cfg) -> str:
    """fairseq-train's --save-dir (the working directory outside fairseq-train)."""
    checkpoint = section(cfg, "checkpoint")
    return checkpoint.save_dir if checkpoint is not None else "."


def evaluated_paths(cfg) -> Optional[str]:
    """fairseq-generate's --path (None in fairseq-train and outside fairseq)."""
    common_eval = section(cfg, "common_eval")
    return common_eval.get("path") if common_eval is not None else None


# --- writing ----------------------------------------------------------------------------------------------
def ignore_unused_valid_subsets(cfg):
    """fairseq-train's check for unused valid* files in the --data folder left out (--data names TSV files)."""
    dataset = section(cfg, "dataset")
    if dataset is not None:
        with open_dict(dataset):
            dataset.ignore_unused_valid_subsets = True


def use_scoring(cfg, name: str):
    """fairseq-generate's --scoring set to the plugin's scorer `name`, writing where fairseq-generate writes."""
    root = root_of(cfg)
    dataset = section(cfg, "dataset")
    with open_dict(root):
        root.scoring = OmegaConf.create({"_name": name, "ofa_results_file": None,
                                         "results_path": root.common_eval.results_path,
                                         "gen_subset": dataset.gen_subset if dataset is not None else None})


def set_lr_schedule_length(cfg, total: float, warmup: int):
    """The scheduler's --total-num-update and --warmup-updates, before fairseq-train builds the scheduler."""
    scheduler = section(cfg, "lr_scheduler")
    scheduler.total_num_update, scheduler.warmup_updates = total, warmup


def stop_after_this_update(cfg):
    """fairseq-train stops after the update under way, by its own --stop-time-hours rule (validate_and_save
    reads it after every update): it validates, saves checkpoint_last.pt and exits 0."""
    section(cfg, "optimization").stop_time_hours = 1e-12


def train_off_tpu(cfg):
    """common.tpu off, which fairseq's options turn on with --bf16 (read when the Trainer is built)."""
    common = section(cfg, "common")
    with open_dict(common):
        common.tpu = False


# --- the command line -------------------------------------------------------------------------------------
def explicit_options(argv: Optional[List[str]] = None) -> Set[str]:
    """The option names (as config keys) the command line gives (`argv`: without the program name; default
    this process's). fairseq's parsers accept no abbreviations (allow_abbrev=False), so an option given
    stands as `--name` or `--name=value`, before a bare `--`."""
    keys = set()
    for token in sys.argv[1:] if argv is None else argv:
        if token == "--":  # what follows is positional
            break
        if token.startswith("--") and len(token) > 2:
            keys.add(token[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def program_name() -> str:
    """The command this process runs as (fairseq-train, python -m ofa_prompt.TOOL's module), for messages."""
    return os.path.basename(sys.argv[0] or "python")
