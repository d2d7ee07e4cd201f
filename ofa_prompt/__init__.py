"""ofa_prompt: prefix prompt tuning for OFA as a fairseq plugin (`--user-dir ofa_prompt`).

Importing the package loads the plugin (`load()`), as fairseq's --user-dir does, except while `python -m
ofa_prompt.TOOL` imports it to find TOOL: the tool then loads it after reading its arguments."""
import contextlib
import importlib
import logging
import sys
import warnings

from .version import __version__  # noqa: F401

_API = {"load_model": "hub", "OFAPredictor": "predictor", "from_pretrained": "predictor"}  # name -> its module


@contextlib.contextmanager
def _import_notices_silenced():
    """fairseq's import prints two notices that ask nothing of the user (fairseq-train prints them before the
    plugin is imported; the tools and Python, which import fairseq through the plugin, do not): torch's
    deprecation of the torch.jit.script that fairseq's modules apply, and the tensorboardX that only fairseq's
    text-to-speech task would use."""
    tts = logging.getLogger("fairseq.tasks.text_to_speech")
    tts.addFilter(_no_tensorboardx_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            yield
    finally:
        tts.removeFilter(_no_tensorboardx_notice)


def _no_tensorboardx_notice(record: logging.LogRecord) -> bool:
    return "install tensorboardX" not in record.getMessage()


def load():
    """What `import ofa_prompt` means: fairseq's behaviour changed as fairseq_compat's docstring says, and the
    plugin's tasks, models, criteria and scorers registered with fairseq. Imports fairseq (seconds); once."""
    # fairseq's import configures logging (the root logger at DEBUG, so PIL's DEBUG lines reach notebooks): a
    # command-line tool configures its own logging before importing the plugin, a library leaves it alone
    root_level = logging.root.level
    with _import_notices_silenced():
        from . import fairseq_compat
    logging.root.setLevel(root_level)
    fairseq_compat.install()  # every change to fairseq's behaviour: see fairseq_compat's docstring
    from . import criterions, metrics, models, tasks  # noqa: F401  (registration with fairseq)


def __getattr__(name):
    """The Python API (PEP 562): load_model, OFAPredictor, from_pretrained, with the plugin loaded."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load()
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)


# `python -m ofa_prompt.TOOL` imports this package to find TOOL, with sys.argv[0] "-m" meanwhile (as Python's
# documentation of -m says): loading the plugin here would make TOOL's --help and argument errors wait for
# fairseq's import, and would import TOOL's module before runpy runs it as __main__ (runpy's RuntimeWarning)
if sys.argv[:1] != ["-m"]:
    load()
