"""OFA's tasks, registered under OFA's names, and their mix for pretraining."""
from . import caption, mix, refcoco, snli_ve, vqa  # noqa: F401
