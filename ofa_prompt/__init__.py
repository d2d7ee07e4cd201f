"""ofa_prompt: prefix prompt tuning for OFA as a fairseq plugin (`--user-dir ofa_prompt`)."""
from . import criterions, metrics, models, tasks  # noqa: F401  (registration with fairseq)
from .hub import load_model  # noqa: F401

__version__ = "0.1.0"
