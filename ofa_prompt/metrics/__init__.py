"""Task metrics (pure functions) and the fairseq scorers that report them from fairseq-generate."""
from . import scorers  # noqa: F401  (registers --scoring ofa_caption|ofa_vqa|ofa_refcoco|ofa_snli_ve)
