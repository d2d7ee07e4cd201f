"""ofa_prompt: prefix prompt tuning for OFA as a fairseq plugin (`--user-dir ofa_prompt`)."""
import logging

# fairseq's import configures logging (the root logger at DEBUG, so PIL's DEBUG lines reach notebooks): a
# command-line tool configures its own logging before importing the plugin, a library leaves it alone
_root_level = logging.root.level
from . import fairseq_compat  # noqa: E402
logging.root.setLevel(_root_level)

fairseq_compat.install()  # every change to fairseq's behaviour: see fairseq_compat's docstring

from . import criterions, metrics, models, tasks  # noqa: F401,E402  (registration with fairseq)
from .hub import load_model  # noqa: F401,E402
from .predictor import OFAPredictor, from_pretrained  # noqa: F401,E402

from .version import __version__  # noqa: F401,E402
