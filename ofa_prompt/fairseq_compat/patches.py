"""The code changes to fairseq (and torch) that fairseq_compat's docstring lists, each with its guard and its
reason; `install()` applies those that need no configuration. Importing this module imports fairseq."""
import argparse
import functools
import importlib.util
import inspect
import logging
import os
import re
import shutil
import signal
import sys
import threading
import warnings

import fairseq.trainer
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager
from fairseq.models import ema as fairseq_ema

from ..errors import InputError
from . import config

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
    # imported when fairseq calls this, not at the top: the plugin's modules import this one
    from ..models.ofa import OFAModel
    from ..tasks.ema import OFAEMA

    if isinstance(model, OFAModel):
        return OFAEMA(model, config, device)
    return fairseq_ema.build_ema(model, config, device)


def _use_ofa_ema():
    # fairseq's EMA averages every state-dict entry: integer BatchNorm counters make it fail, tied embeddings
    # are averaged three times per update, a frozen backbone is copied at every update (guard: the Trainer
    # builds its EMA through the name it imported, fairseq >= 0.12)
    if callable(getattr(fairseq.trainer, "build_ema", None)):
        fairseq.trainer.build_ema = build_ema
    else:
        logger.warning("this fairseq's Trainer has no build_ema: --store-ema keeps fairseq's own EMA")


# --- the checkpoint writer -------------------------------------------------------------------------------
def _writes_prompt_only(state_dict):
    @functools.wraps(state_dict)
    def wrapper(self):
        from ..checkpoint import prompt_only_checkpoint
        from ..models.ofa import OFAModel

        state = state_dict(self)
        model = self.get_model()
        return prompt_only_checkpoint(model, state) if isinstance(model, OFAModel) else state

    wrapper.ofa_prompt_only = True
    return wrapper


def _write_prompt_only_checkpoints():
    # the models' state_dict() is the whole one (the EMA and torch rely on that), so the tuned tensors are
    # selected where the Trainer assembles what save_checkpoint writes (guard: it writes self.state_dict(),
    # fairseq 0.12)
    if getattr(Trainer.state_dict, "ofa_prompt_only", False):
        pass
    elif "self.state_dict()" in _source(Trainer.save_checkpoint):
        Trainer.state_dict = _writes_prompt_only(Trainer.state_dict)
    else:
        logger.warning("this fairseq's Trainer.save_checkpoint does not write Trainer.state_dict(): checkpoints "
                       "of a frozen backbone hold the whole model")


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


def _reinit_ema_without_ema_state():
    # --store-ema from a checkpoint without EMA state (OFA's scripts: --restore-file ofa_base.pt): fairseq's
    # Trainer deletes the loaded weights, then re-initializes the EMA from them (KeyError: 'model'); guard:
    # that code is there (fairseq 0.12.x)
    if _loses_weights_before_ema_reinit(Trainer.load_checkpoint) \
            and not isinstance(fairseq.trainer.checkpoint_utils, TrainerCheckpointUtils):
        fairseq.trainer.checkpoint_utils = TrainerCheckpointUtils()


# --- checkpoint files ------------------------------------------------------------------------------------
def _atomic_copy(original):
    """PathManager.copy that writes local copies through a temporary file and a rename.

    fairseq writes the first checkpoint of a save atomically (.tmp + rename) but makes checkpoint_last.pt
    and checkpoint_best.pt with a plain copy: a run killed during that copy would leave a truncated
    checkpoint_last.pt, which the next run resumes from. With a rename the old file stays whole until
    the new one is complete."""
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in src_path or "://" in dst_path or not overwrite:
            return original(src_path, dst_path, overwrite)  # remote storage or no-overwrite semantics
        tmp = dst_path + ".tmp"
        try:
            shutil.copyfile(src_path, tmp)
            os.replace(tmp, dst_path)
        except OSError as e:
            raise CheckpointWriteError(checkpoint_write_failure(dst_path, e)) from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True

    copy.atomic = True
    return copy


class CheckpointWriteError(InputError, OSError):
    """A checkpoint fairseq-train could not write (a full disk, a quota, a read-only folder)."""


def checkpoint_write_failure(path: str, error: OSError) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2 ** 20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return (f"cannot write checkpoint {path}: {error.strerror or error} ({free} in {folder}); the checkpoints "
            "already there are intact and no partial file is left: make room (or move --save-dir) and run the "
            "same command, which resumes from checkpoint_last.pt")


def _failed_saves_leave_nothing(save):
    """fairseq's torch_persistent_save writes FILE.tmp and renames it: when the write fails it leaves the
    partial FILE.tmp (on a full disk, a file that keeps the disk full) and raises the bare OSError."""
    @functools.wraps(save)
    def wrapper(obj, filename, async_write=False):
        try:
            return save(obj, filename, async_write)
        except OSError as e:
            tmp = f"{filename}.tmp"
            if isinstance(filename, str) and "://" not in filename and os.path.exists(tmp):
                os.remove(tmp)
            raise CheckpointWriteError(checkpoint_write_failure(filename, e)) from e

    wrapper.leaves_nothing = True
    return wrapper


def _safe_checkpoint_files():
    if not getattr(PathManager.copy, "atomic", False):  # PathManager is a class fairseq's modules share
        PathManager.copy = staticmethod(_atomic_copy(PathManager.copy))
    # guard: the Trainer saves through checkpoint_utils.torch_persistent_save (fairseq 0.12)
    save = getattr(checkpoint_utils, "torch_persistent_save", None)
    if save is not None and not getattr(save, "leaves_nothing", False) \
            and "torch_persistent_save" in _source(Trainer.save_checkpoint):
        checkpoint_utils.torch_persistent_save = _failed_saves_leave_nothing(save)


# --- SIGTERM and Ctrl-C ----------------------------------------------------------------------------------
def _stop_after_update_on(signum, python_default, name: str, again: str, cfg):
    """Signal `signum` makes fairseq-train (configuration `cfg`) stop after the update under way
    (config.stop_after_this_update), and the same command resumes. The signal a second time acts as Python's
    default does (`python_default`); a handler someone else set is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signum) is not python_default:
        return

    def handler(sig, frame):
        signal.signal(signum, python_default)
        logger.warning("%s: stopping after the update under way, with a checkpoint (the same command resumes); %s",
                       name, again)
        config.stop_after_this_update(cfg)

    signal.signal(signum, handler)


def stop_after_update_on_sigterm(cfg):
    """SIGTERM (a scheduler's pre-emption, `kill`): Python's default ends at once, losing the updates since the
    last checkpoint."""
    _stop_after_update_on(signal.SIGTERM, signal.SIG_DFL, "SIGTERM", "a second SIGTERM stops at once", cfg)


def stop_after_update_on_sigint(cfg):
    """Ctrl-C (SIGINT): Python's default raises KeyboardInterrupt wherever training is, which fairseq-train does
    not catch, so nothing is saved."""
    _stop_after_update_on(signal.SIGINT, signal.default_int_handler, "Ctrl-C",
                          "Ctrl-C again stops at once, without saving", cfg)


# --- --bf16 without a TPU -------------------------------------------------------------------------------
def bf16_without_tpu(model_cfg):
    """fairseq's options turn --bf16 into --tpu (bf16 meant TPUs when they were written), and its Trainer
    then asks torch_xla for a device. Without torch_xla, train in bfloat16 on the CPU or GPU instead:
    fairseq's own bf16 path (model in bfloat16, FP16Optimizer with float32 master copies, no loss scaling).
    Must run before the Trainer is built, which reads common.tpu; `model_cfg` is fairseq-train's cfg.model."""
    common = config.section(model_cfg, "common")
    if common is None or not (common.bf16 and common.tpu) or importlib.util.find_spec("torch_xla") is not None:
        return
    config.train_off_tpu(model_cfg)
    logger.info("--bf16 without torch_xla: training in bfloat16 on the %s, not on a TPU",
                "CPU" if common.cpu or not torch.cuda.is_available() else "GPU")


# --- a quiet start-up ----------------------------------------------------------------------------------
# hydra's notices about how fairseq 0.12 composes its own configuration (fairseq's code, not the user's; hydra
# 1.1+ with the 1.0-style calls fairseq makes), and torch's notice that pinned memory (fairseq's data loader
# asks for it) needs an accelerator: 20 lines at every start-up that ask nothing of the user
_NOTICES = (
    (UserWarning, r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental"),
    (UserWarning, r"\s*The version_base parameter is not specified"),
    (UserWarning, r"In 'config': Usage of deprecated keyword in package header '# @package _group_'"),
    (UserWarning, r"\s*'config' is validated against ConfigStore schema with the same name"),
    (UserWarning, r"\s*The strict flag in the compose API is deprecated"),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found"),
)


def _not_model_printout(record: logging.LogRecord) -> bool:
    return not isinstance(record.msg, torch.nn.Module)


def _catalogs_tensors_only(catalog):
    """fairseq's Trainer looks for parameters shared between modules by identity, over every module's
    `_parameters`, where torch keeps an absent bias (bias=False: every ResNet convolution, the output projection)
    as None: all of them are then one "shared parameter" (24 log lines for OFA's ResNet), which the Trainer
    "re-ties" by setting None to None. Absent parameters are left out; real shared tensors (tied embeddings)
    are reported and tied as before."""
    @functools.wraps(catalog)
    def wrapper(module, memo=None, prefix=""):
        shared = catalog(module, memo, prefix)  # the inner calls (memo given) return None
        if shared is None:
            return None
        return [paths for paths in shared if functools.reduce(getattr, paths[0].split("."), module) is not None]

    wrapper.tensors_only = True
    return wrapper


def _quiet_start_up():
    for category, message in _NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)
    # fairseq-train logs the whole model (a line per module: 240 for OFA-Base) before its one-line summary
    # ("num. shared model params: N (num. trained: M)") and the plugin's trainable share; print(model) in
    # Python (ofa_prompt.load_model) shows the modules
    logging.getLogger("fairseq_cli.train").addFilter(_not_model_printout)  # once: addFilter skips a known one
    # guard: the Trainer catalogs through the module-level function (fairseq 0.12)
    catalog = getattr(fairseq.trainer, "_catalog_shared_params", None)
    if catalog is not None and not getattr(catalog, "tensors_only", False) \
            and "_catalog_shared_params(" in _source(Trainer.__init__):
        fairseq.trainer._catalog_shared_params = _catalogs_tensors_only(catalog)


# --- messages --------------------------------------------------------------------------------------------
def input_error_within(error: BaseException):
    """The InputError that `error` is, or that it was raised while handling: fairseq's Trainer turns whatever
    loading a checkpoint raises into "Cannot load model parameters from checkpoint ...", which says less."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line_input_errors(previous):
    def hook(kind, value, traceback):
        found = input_error_within(value)
        if found is not None and not os.environ.get("OFA_PROMPT_TRACEBACK"):
            print(f"{config.program_name()}: error: {found}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    hook.one_line_input_errors = True
    return hook


def install():
    """Apply every change above that needs no configuration, once per process."""
    # OFA's checkpoints (and fairseq's own) pickle an argparse.Namespace of arguments; torch >= 2.6 loads with
    # weights_only=True and refuses it unless allow-listed. A Namespace holds plain data only.
    torch.serialization.add_safe_globals([argparse.Namespace])
    # fairseq 0.12's train step uses the deprecated torch.cuda.amp.autocast: the warning names fairseq's
    # code, not the user's, and is printed again at every update (2 lines each); other warnings stay
    warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast", category=FutureWarning,
                            module=r"fairseq\.")
    _use_ofa_ema()
    _write_prompt_only_checkpoints()
    _reinit_ema_without_ema_state()
    _safe_checkpoint_files()
    _quiet_start_up()


def print_input_errors_as_one_line():
    """For a command's user (fairseq's commands, the python -m tools): a Python program keeps its tracebacks."""
    if not getattr(sys.excepthook, "one_line_input_errors", False):
        sys.excepthook = _one_line_input_errors(sys.excepthook)
