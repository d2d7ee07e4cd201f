"""ofa_prompt: prefix prompt tuning for OFA as a fairseq plugin (`--user-dir ofa_prompt`).

`import ofa_prompt` changes nothing and imports neither torch nor fairseq. `load()` loads the plugin; fairseq's
--user-dir import does (fairseq_compat.imported_by_user_dir), and so do the Python API (load_model, OFAPredictor,
from_pretrained) and the python -m tools, once they have read their arguments."""
import importlib

from . import fairseq_compat
from .version import __version__  # noqa: F401

_API = {"load_model": "hub", "OFAPredictor": "predictor", "from_pretrained": "predictor"}  # name -> its module


def load(command_line: bool = False):
    """The plugin loaded: fairseq's behaviour changed as fairseq_compat's docstring says, and the plugin's tasks,
    models, criteria and scorers registered with fairseq. Imports fairseq (seconds); once. `command_line`: a
    command runs (fairseq's, a python -m tool), whose input errors print as one line, without a traceback."""
    fairseq_compat.install(command_line)
    from . import criterions, metrics, models, tasks  # noqa: F401  (registration with fairseq)


def __getattr__(name):
    """The Python API (PEP 562): load_model, OFAPredictor, from_pretrained, with the plugin loaded."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    load()
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)


if fairseq_compat.imported_by_user_dir():
    load(command_line=True)
