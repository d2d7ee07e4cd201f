"""The exponential moving average of an OFA model: fairseq-train's --store-ema (which --uses-ema validates
with, OFATask.valid_step) and fairseq-generate's --ema-eval (evaluate a checkpoint's EMA weights).

fairseq's semantics are kept: after update n, every trained tensor becomes decay * EMA + (1 - decay) * live,
with decay 0 (a copy) before --ema-start-update, and only every --ema-update-freq updates; the EMA is saved
as the checkpoint's extra_state["ema"] (and "ema_fp32_params" with --ema-fp32) and resumed from there.

What is averaged is what trains: the prompts, adapters or biases of a frozen backbone, and with finetuning
every parameter and the BatchNorm statistics (the integer counters are copied). Frozen tensors never change:
the EMA model shares them with the live model instead of holding a copy of the backbone.
"""
import copy
import logging
from typing import Dict, List, Tuple

import torch
from fairseq.models.ema import EMA
from fairseq.utils import split_paths

from ..checkpoint import BACKBONE_KEY, read_checkpoint
from ..fairseq_compat.config import evaluated_paths, section
from .saved_settings import SettingsError  # one line on the command line, no traceback

logger = logging.getLogger(__name__)


# --- the maths ----------------------------------------------------------------------------------------
def decay_at(updates: int, decay: float, start_update: int) -> float:
    """fairseq's decay after `updates` updates: 0 (copy the live model) until --ema-start-update."""
    return 0.0 if updates < start_update else decay


def update_due(updates: int, update_freq: int) -> bool:
    """Whether the EMA moves after update `updates` with --ema-update-freq. Counted on the update number
    rather than on calls (as fairseq does), so that a resumed run moves at the same updates as an
    uninterrupted one."""
    return update_freq <= 1 or updates % update_freq == 0


def ema_update_(average: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    """average <- decay * average + (1 - decay) * value, in place and in average's dtype."""
    if decay == 0:
        return average.copy_(value)  # exact, even where the average held inf or nan
    return average.mul_(decay).add_(value.to(average.dtype), alpha=1 - decay)


def ema_plan(model) -> Tuple[List[str], List[str]]:
    """(averaged, copied): the state-dict keys whose tensors the EMA averages, and those it copies from the
    live model (integer counters). Each tensor appears once, under its first name: tied embeddings are
    averaged once per update. Everything else is frozen."""
    state = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    # BatchNorm statistics move only when the backbone trains (OFAModel.train keeps a frozen ResNet in eval)
    moving_buffers = getattr(model, "tuning", "finetune") == "finetune"
    averaged, copied, seen = [], [], set()
    for key, tensor in state.items():
        if id(tensor) in seen or not torch.is_tensor(tensor):
            continue
        seen.add(id(tensor))
        if id(tensor) in params:
            if id(tensor) in trained:
                averaged.append(key)
        elif moving_buffers and key.rsplit(".", 1)[-1] != "version":  # fairseq never averages versions
            (averaged if tensor.is_floating_point() else copied).append(key)
    return averaged, copied


# --- fairseq-train's EMA --------------------------------------------------------------------------------
class OFAEMA(EMA):
    """fairseq's trainer-level EMA (same constructor, step, restore, reverse, build_fp32_params, fp32_params)
    over the tensors `ema_plan` names; fairseq.trainer builds it for OFA models (ofa_prompt.fairseq_compat)."""

    def __init__(self, model, config, device=None, skip_keys=None):
        self.config = config
        self.decay = config.ema_decay
        self.averaged, self.copied = ema_plan(model)
        state = model.state_dict(keep_vars=True)
        moving = set(self.averaged) | set(self.copied)
        if skip_keys:  # fairseq's skip_keys: copied, not averaged
            self.averaged = [k for k in self.averaged if k not in skip_keys]
            self.copied += [k for k in skip_keys if k in state and k not in self.copied]
            moving |= set(skip_keys)
        # deepcopy with the frozen tensors mapped to themselves: shared, not copied (by identity: a tied
        # tensor that moves moves under all its names)
        moving_ids = {id(state[k]) for k in moving if k in state}
        memo = {id(t): t for t in state.values() if torch.is_tensor(t) and id(t) not in moving_ids}
        self.model = copy.deepcopy(model, memo)
        self.model.requires_grad_(False)
        self.skip_keys = set(skip_keys or ())
        self.fp32_params: Dict[str, torch.Tensor] = {}
        self.update_freq_counter = 0
        if device is not None:
            self.model = self.model.to(device=device)
        if config.ema_seed_model is not None:
            self.restore(seed_ema_state(config.ema_seed_model))
        if config.ema_fp32:
            self.build_fp32_params()
        logger.info("EMA of %d tensors (%d parameters)%s", len(self.averaged),
                    sum(state[k].numel() for k in self.averaged), f", {len(self.copied)} copied" if self.copied else "")

    def build_fp32_params(self, state_dict=None):
        """float32 copies of the averaged tensors (the EMA model's own where it is float32), from
        `state_dict` where it holds them, else from the EMA model."""
        if not self.config.ema_fp32:
            raise RuntimeError("build_fp32_params needs --ema-fp32")
        own = self.model.state_dict()
        source = own if state_dict is None else state_dict
        for key in self.averaged:
            value = source.get(key)
            value = own[key] if not torch.is_tensor(value) else value
            if key not in self.fp32_params:
                self.fp32_params[key] = own[key].detach().float()
            if value is not self.fp32_params[key]:
                _check_shape(key, value, own[key])
                self.fp32_params[key].copy_(value)

    def restore(self, state_dict, build_fp32_params=False):
        """Load EMA weights: a prompt-only state dict (what the plugin saves for a frozen backbone) or a whole
        model's. Trained tensors it lacks keep the EMA model's value (the loaded live model's)."""
        tensors = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
        if BACKBONE_KEY in state_dict or getattr(self.model, "tuning", "finetune") != "finetune":
            own = self.model.state_dict()
            wanted = self.averaged + self.copied
            with torch.no_grad():
                for key in wanted:
                    if key in tensors:
                        _check_shape(key, tensors[key], own[key])
                        own[key].copy_(tensors[key])
            missing = [k for k in self.averaged if k not in tensors]
            if missing and BACKBONE_KEY in state_dict:
                logger.warning("the EMA state lacks %d trained tensors (%s; a checkpoint of an older version of the "
                               "plugin saved none): they restart from the loaded model", len(missing), missing[0])
        elif tensors:  # a whole model, maybe in OFA's layout: as the live model loads it
            self.model.load_state_dict(dict(state_dict), strict=False)
        if build_fp32_params:
            self.build_fp32_params(tensors)

    def step(self, new_model, updates=None):
        if updates is not None:
            self._set_decay(decay_at(updates, self.config.ema_decay, self.config.ema_start_update))
            due = update_due(updates, self.config.ema_update_freq)
        else:  # no update number given: count the calls, as fairseq does
            self.update_freq_counter += 1
            due = self.update_freq_counter >= self.config.ema_update_freq
            if due:
                self.update_freq_counter = 0
        if due:
            self._step_internal(new_model, updates)

    def _step_internal(self, new_model, updates=None):
        live, own = new_model.state_dict(), self.model.state_dict()
        with torch.no_grad():
            for key in self.averaged:
                average = self.fp32_params[key] if self.config.ema_fp32 else own[key]
                ema_update_(average, live[key], self.decay)
                if average.data_ptr() != own[key].data_ptr():  # a separate float32 copy
                    own[key].copy_(average)
            for key in self.copied:
                own[key].copy_(live[key])

    def reverse(self, model):
        """Load the EMA weights into `model`."""
        own, target = self.model.state_dict(), model.state_dict()
        with torch.no_grad():
            for key in self.averaged + self.copied:
                target[key].copy_(own[key])
        return model


def _check_shape(key, value, own, where="the EMA state"):
    if tuple(value.shape) != tuple(own.shape):  # copy_ would broadcast some of these silently
        raise ValueError(f"{where}: {key} has shape {list(value.shape)}, the model's is {list(own.shape)}")


def seed_ema_state(path: str) -> dict:
    """The EMA state of checkpoint `path` (fairseq-train --ema-seed-model)."""
    return checkpoint_ema(path, "--ema-seed-model")


# --- fairseq-generate's --ema-eval ----------------------------------------------------------------------
def refuse_ema_eval(task_cfg):
    """fairseq-train: --ema-eval would change nothing there."""
    if getattr(task_cfg, "ema_eval", False):
        raise SettingsError("--ema-eval evaluates a checkpoint's EMA weights in fairseq-generate; fairseq-train "
                            "validates with the EMA under --store-ema --uses-ema")


def generate_checkpoint(task_cfg, index: int) -> str:
    """The file fairseq-generate loads its `index`-th model from: the index-th of --path, with
    --checkpoint-suffix (fairseq's naming)."""
    given = evaluated_paths(task_cfg)
    if not given:
        raise SettingsError("--ema-eval needs the checkpoints as fairseq-generate's --path")
    paths = split_paths(given)
    if index >= len(paths):
        raise SettingsError(f"--ema-eval: model {index + 1} is built from a checkpoint, but --path names {len(paths)}")
    ckpt = section(task_cfg, "checkpoint")
    if ckpt is not None and (ckpt.get("checkpoint_shard_count") or 1) > 1:
        raise SettingsError("--ema-eval does not read sharded checkpoints (--checkpoint-shard-count > 1)")
    suffix = (ckpt.get("checkpoint_suffix") if ckpt is not None else "") or ""
    return paths[index].replace(".pt", suffix + ".pt")


def checkpoint_ema(path: str, option: str = "--ema-eval") -> dict:
    """extra_state["ema"] of checkpoint `path`, or an error naming the file when it holds no EMA weights."""
    state = read_checkpoint(path)
    ema = (state.get("extra_state") or {}).get("ema")
    if not isinstance(ema, dict) or not any(torch.is_tensor(v) for v in ema.values()):
        why = ("its EMA state holds no weights (written by a plugin version that saved none of the tuned tensors)"
               if isinstance(ema, dict)
               else "it has no EMA state (extra_state['ema']): it was trained without --store-ema")
        raise SettingsError(f"{option}: {path} holds no EMA weights: {why}; use it without {option}")
    return ema


def load_ema_weights(model, ema: dict, path: str):
    """Put the EMA weights `ema` of checkpoint `path` into `model`, which holds that checkpoint's weights: a
    prompt-only EMA replaces the tuned tensors (the backbone is the model's), a whole one everything."""
    if BACKBONE_KEY not in ema:
        try:
            model.load_state_dict(dict(ema), strict=True)
        except ValueError as e:
            raise SettingsError(f"--ema-eval: the EMA weights of {path} do not fit the model: {e}") from e
        return
    own = model.state_dict()
    tensors = {k: v for k, v in ema.items() if torch.is_tensor(v)}
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise SettingsError(f"--ema-eval: the EMA weights of {path} hold tensors this model lacks: {unknown[:4]}")
    with torch.no_grad():
        for key, value in tensors.items():
            _check_shape(key, value, own[key], f"--ema-eval: the EMA weights of {path}")
            own[key].copy_(value)


def evaluate_ema_of(model, path: str):
    """Make `model`, which fairseq is about to load checkpoint `path` into (load_model_ensemble: build_model,
    then load_state_dict), end up with that checkpoint's EMA weights. Fails now, naming the file, when it
    holds none."""
    ema = checkpoint_ema(path)
    handle = None

    def after_load(module, incompatible_keys):
        handle.remove()  # once: the checkpoint's own load
        load_ema_weights(module, ema, path)
        logger.info("--ema-eval: evaluating the EMA weights of %s", path)

    handle = model.register_load_state_dict_post_hook(after_load)
