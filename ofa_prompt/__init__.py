"""ofa_prompt: prefix prompt tuning for OFA as a fairseq plugin (`--user-dir ofa_prompt`)."""
import argparse
import warnings

import torch

# OFA's checkpoints (and fairseq's own) pickle an argparse.Namespace of arguments; torch >= 2.6 loads
# with weights_only=True and refuses it unless allow-listed. A Namespace holds plain data only.
torch.serialization.add_safe_globals([argparse.Namespace])
# fairseq 0.12's train step uses the deprecated torch.cuda.amp.autocast; the warning names fairseq's code,
# not the user's, and was printed again at every update (2 lines each)
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast", category=FutureWarning)

from . import criterions, metrics, models, tasks  # noqa: F401,E402  (registration with fairseq)
from .hub import load_model  # noqa: F401,E402

__version__ = "0.1.0"
