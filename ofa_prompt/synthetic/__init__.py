"""The embedded synthetic benchmark: images of coloured shapes with OFA-format TSVs for all four tasks
(`python -m ofa_prompt.synthetic --out DIR --seed 0`)."""
from .generate import HELD_OUT, TASKS, generate  # noqa: F401
