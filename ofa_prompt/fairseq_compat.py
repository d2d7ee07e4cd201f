"""Where the plugin changes stock fairseq's behaviour, each change guarded by a check that the code it
changes is there (fairseq 0.12.x), with why.

* fairseq-train's EMA (--store-ema) of an OFA model is ofa_prompt.tasks.ema.OFAEMA;
* fairseq-train's checkpoint writer keeps only the tuned tensors of a frozen backbone (model and EMA);
* a checkpoint without EMA state (OFA's released ones) re-initializes the EMA instead of failing.
"""
import functools
import inspect
import logging
import re

import fairseq.trainer
from fairseq import checkpoint_utils
from fairseq.models import ema as fairseq_ema

logger = logging.getLogger(__name__)
Trainer = fairseq.trainer.Trainer


def _source(function) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # no source (a frozen install): the guards below then leave fairseq alone
        return ""


# --- the EMA ---------------------------------------------------------------------------------------------
def build_ema(model, config, device):
    """OFAEMA for OFA models, fairseq's EMA for any other."""
    from .models.ofa import OFAModel
    from .tasks.ema import OFAEMA

    if isinstance(model, OFAModel):
        return OFAEMA(model, config, device)
    return fairseq_ema.build_ema(model, config, device)


# fairseq's EMA averages every state-dict entry: integer BatchNorm counters make it fail, tied embeddings are
# averaged three times per update, a frozen backbone is copied at every update (guard: the Trainer builds its
# EMA through the name it imported, fairseq >= 0.12)
if callable(getattr(fairseq.trainer, "build_ema", None)):
    fairseq.trainer.build_ema = build_ema
else:
    logger.warning("this fairseq's Trainer has no build_ema: --store-ema keeps fairseq's own EMA")


# --- the checkpoint writer -------------------------------------------------------------------------------
def _writes_prompt_only(state_dict):
    @functools.wraps(state_dict)
    def wrapper(self):
        from .checkpoint import prompt_only_checkpoint
        from .models.ofa import OFAModel

        state = state_dict(self)
        model = self.get_model()
        return prompt_only_checkpoint(model, state) if isinstance(model, OFAModel) else state

    wrapper.ofa_prompt_only = True
    return wrapper


# prompt-only checkpoints: the models' state_dict() is the whole one (the EMA and torch rely on that), so the
# tuned tensors are selected where the Trainer assembles what save_checkpoint writes (guard: it writes
# self.state_dict(), fairseq 0.12)
if getattr(Trainer.state_dict, "ofa_prompt_only", False):
    pass
elif "self.state_dict()" in _source(Trainer.save_checkpoint):
    Trainer.state_dict = _writes_prompt_only(Trainer.state_dict)
else:
    logger.warning("this fairseq's Trainer.save_checkpoint does not write Trainer.state_dict(): checkpoints of "
                   "a frozen backbone hold the whole model")


# --- a checkpoint without EMA state ----------------------------------------------------------------------
class TrainerCheckpointUtils:
    """fairseq.checkpoint_utils as fairseq's Trainer sees it: a checkpoint without EMA state gets its own
    weights as that state, which is what the Trainer means to re-initialize the EMA from."""

    def __getattr__(self, name):
        return getattr(checkpoint_utils, name)

    @staticmethod
    def load_checkpoint_to_cpu(*args, **kwargs):
        state = checkpoint_utils.load_checkpoint_to_cpu(*args, **kwargs)
        if state.get("extra_state") is not None and "model" in state:
            state["extra_state"].setdefault("ema", state["model"])
        return state


def _loses_weights_before_ema_reinit(load_checkpoint) -> bool:
    source = _source(load_checkpoint)
    return 'del state["model"]' in source and re.search(r'ema\.restore\(\s*state\["model"\]', source) is not None


# --store-ema from a checkpoint without EMA state (OFA's scripts: --restore-file ofa_base.pt): fairseq's
# Trainer deletes the loaded weights, then re-initializes the EMA from them (KeyError: 'model'); guard: that
# code is there (fairseq 0.12.x)
if _loses_weights_before_ema_reinit(Trainer.load_checkpoint) \
        and not isinstance(fairseq.trainer.checkpoint_utils, TrainerCheckpointUtils):
    fairseq.trainer.checkpoint_utils = TrainerCheckpointUtils()
