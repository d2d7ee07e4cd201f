"""OFA's downstream tasks, registered under OFA's names."""
from . import caption, refcoco, snli_ve, vqa  # noqa: F401
