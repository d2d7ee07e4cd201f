"""The Python API's inputs (ofa_prompt.predictor), checked and turned into the rows the tasks read: images in
any form, texts, batch sizes, generation options, and the requests of a mixed batch. Each refusal is an InputError
naming the argument (docs/api_inputs.md lists them with their tests)."""
import os
from dataclasses import fields
from typing import Iterable, Optional, Union

import numpy as np
import torch
from fairseq.dataclass.configs import GenerationConfig
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from PIL import Image

from .data.image import as_rgb
from .data.tokenize import clean_text
from .errors import InputError

ImageLike = Union[Image.Image, str, os.PathLike, torch.Tensor, np.ndarray]

# the options of --eval-args that decide what is generated (not how it is printed or scored)
GENERATION_KEYS = ("beam", "max_len_a", "max_len_b", "min_len", "lenpen", "unnormalized", "no_repeat_ngram_size",
                   "unkpen", "temperature")
# fairseq-generate's search strategies, which a call of one task can use too
SEARCH_KEYS = ("sampling", "sampling_topk", "sampling_topp", "diverse_beam_groups", "diverse_beam_strength",
               "diversity_rate", "match_source_len")
AT_LEAST = {"beam": 1, "max_len_a": 0, "max_len_b": 0, "min_len": 0, "no_repeat_ngram_size": 0}
MIXABLE = {"caption": None, "vqa_gen": "question", "refcoco": "text"}  # task -> the request's text field
REQUEST_KEYS = ("prompts", "image", *(field for field in MIXABLE.values() if field))
PLACEHOLDER = {  # the reference columns of a row, which inference does not read
    "caption": "unused", "vqa_gen": "1.0|!+unused", "refcoco": "0,0,1,1", "snli_ve": "entailment"}


def rgb_image(image: ImageLike, what: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image, a file path, or an array/tensor [H, W, 3] or [3, H, W] (uint8, or
    float in [0, 1])."""
    if isinstance(image, Image.Image):
        return as_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                opened.load()
                return as_rgb(opened)
        except (OSError, ValueError) as e:
            raise InputError(f"{what} {image}: not a readable image ({e})") from None
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        array = image.transpose(1, 2, 0) if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3 else image
        if array.ndim != 3 or array.shape[-1] != 3:
            raise InputError(f"{what}: an array of shape {list(image.shape)}, expected [H, W, 3] or [3, H, W]")
        if array.dtype != np.uint8:
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
                raise InputError(f"{what}: a float array must hold values in [0, 1]")
            array = np.round(array * 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array))
    raise InputError(f"{what}: a {type(image).__name__}, expected a PIL image, a path, or an array")


def as_list(value, n: Optional[int] = None) -> list:
    """`value` as a list: a list or tuple as it is, anything else repeated n times (default once)."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * (1 if n is None else n)


PLURAL = {"question": "questions", "text": "texts", "hypothesis": "hypotheses", "premise": "premises"}


def paired(images, texts, what: str):
    """(one input, images, texts): an image and a text, or lists of one length (a single image or text goes with
    every item of the other list); lists of different lengths are refused rather than cut to the shorter."""
    one = not isinstance(texts, (list, tuple)) and not isinstance(images, (list, tuple))
    texts = as_list(texts, len(images) if isinstance(images, (list, tuple)) else None)
    images = as_list(images, len(texts))
    if len(images) != len(texts):
        raise InputError(f"{len(images)} images and {len(texts)} {PLURAL[what]}: give one {what} per image, "
                         f"or a single one for every image")
    return one, images, [checked_text(t, f"{what} {i}") for i, t in enumerate(texts)]


def checked_text(text, what: str) -> str:
    """`text`, refused where the task's TSV reader would refuse its row: not a string, or empty once
    normalized as OFA normalizes text (punctuation dropped)."""
    if not isinstance(text, str):
        raise InputError(f"{what}: a {type(text).__name__}, expected a string")
    if not clean_text(text):
        raise InputError(f"{what}: {text!r} is empty once punctuation is dropped (as the TSV reader refuses it): "
                         "give some words")
    return text


def positive_int(value, what: str) -> int:
    if type(value) is not int or value < 1:
        raise InputError(f"{what}={value!r}: expected a whole number of at least 1")
    return value


def checked_generation(generation: dict) -> dict:
    """The caller's generation options, each a fairseq-generate option the API applies, of its type and range
    (an unknown or misspelt one would otherwise be dropped without a word)."""
    types = {f.name: f.type for f in fields(GenerationConfig)}
    for key, value in generation.items():
        if key not in GENERATION_KEYS + SEARCH_KEYS:
            raise InputError(f"unknown generation option {key}={value!r}: the options are "
                             f"{', '.join(GENERATION_KEYS + SEARCH_KEYS)}")
        kind = types[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise InputError(f"generation option {key}={value!r}: expected a{'n' if kind is int else ''} "
                             f"{kind.__name__}")
        if key in AT_LEAST and value < AT_LEAST[key] or key == "temperature" and value <= 0:
            raise InputError(f"generation option {key}={value!r}: expected "
                             + (f"at least {AT_LEAST[key]}" if key in AT_LEAST else "a value above 0"))
    return generation


def request_file(request, i: int) -> str:
    if not isinstance(request, dict) or "prompts" not in request or "image" not in request:
        raise InputError(f"request {i}: a dict with 'prompts' (a prompt file) and 'image', got {request!r}")
    unknown = sorted(set(request) - set(REQUEST_KEYS), key=str)
    if unknown:
        raise InputError(f"request {i}: unknown key(s) {', '.join(map(repr, unknown))}; a request has "
                         f"{', '.join(map(repr, REQUEST_KEYS))} (tasks that score candidates are not mixed)")
    if not isinstance(request["prompts"], (str, os.PathLike)):
        raise InputError(f"request {i}: 'prompts' is a {type(request['prompts']).__name__}, expected a prompt file")
    return os.fspath(request["prompts"])


def request_row(name: str, request: dict, i: int) -> list:
    """The TSV row the task would read for a request (reference columns are placeholders)."""
    field = MIXABLE[name]
    other = [key for key in REQUEST_KEYS[2:] if key in request and key != field]
    if other:
        raise InputError(f"request {i}: prompts for --task {name} take no '{other[0]}' "
                         f"({'an image only' if field is None else f'the image and a {field!r}'})")
    if field is not None and field not in request:
        raise InputError(f"request {i}: prompts for --task {name} need the '{field}' to go with the image")
    image = rgb_image(request["image"], f"request {i}'s image")
    if name == "caption":
        return [str(i), image, PLACEHOLDER[name]]
    text = checked_text(request[field], f"request {i}'s {field}")
    if name == "vqa_gen":
        return [str(i), image, text, PLACEHOLDER[name], ""]
    return [str(i), image, text, PLACEHOLDER[name]]


def check_task_options(options: dict, tasks: Iterable[str]):
    """Refuse keyword options that none of `tasks` reads (they would be dropped without a word)."""
    known = {f.name for name in tasks for f in fields(TASK_DATACLASS_REGISTRY[name])}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown task option(s) {', '.join(unknown)}: from_pretrained's keywords are the "
                         "options of the tasks (patch_image_size=480, text_tokenizer='word', ...)")
