from . import label_smoothed_cross_entropy  # noqa: F401
