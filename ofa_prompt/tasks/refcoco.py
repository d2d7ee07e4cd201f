"""Visual grounding (`--task refcoco`): the region is generated as four `<bin_i>` location tokens
(x1, y1, x2, y2), generation restricted to them; scored with Acc@0.5."""
from argparse import Namespace
from dataclasses import dataclass, field

import torch
from fairseq.tasks import register_task
from omegaconf import DictConfig

from ..data.image import image_size_of, load_image
from ..data.tokenize import clean_text
from ..metrics.grounding import acc_at_iou, bins_to_box, quantize_box
from ..per_sample_search import allow_only
from .base import OFATask
from .options import OFATaskConfig


@dataclass
class RefcocoConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={"help": "validate by Acc@0.5"})


def parse_box(text: str):
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"region {text!r} is not 'x1,y1,x2,y2'")
    if len(box) != 4:
        raise ValueError(f"region {text!r} is not 'x1,y1,x2,y2'")
    return box


def box_problem(x1, y1, x2, y2, w, h):
    """What is wrong with an x1,y1,x2,y2 box in a w x h image (a pixel of slack at the far edges, as
    annotation tools write), or None."""
    if x1 == x2 or y1 == y2:
        return f"the box has no {'width' if x1 == x2 else 'height'} (x1 {'=' if x1 == x2 else '!='} x2, " \
               f"y1 {'=' if y1 == y2 else '!='} y2)"
    if x1 > x2 or y1 > y2:
        return "the corners are swapped (expected x1 < x2 and y1 < y2)"
    if x1 < 0 or y1 < 0 or x2 > w + 1 or y2 > h + 1:
        return f"the box reaches outside the {w}x{h} image"
    return None


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(OFATask):
    default_cols = "0,4,2,3"
    column_names = "uniq_id, image, text, region x1,y1,x2,y2"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.bin0 = dictionary.index("<bin_0>")
        allowed = torch.zeros(len(dictionary), dtype=torch.bool)
        allowed[self.bin0:self.bin0 + cfg.num_bins] = True
        allowed[dictionary.eos()] = True
        self.allowed = allowed

    def check_row(self, cols):
        _, image, text, region = cols
        w, h = image_size_of(image)
        self.check_text(clean_text(text), "referring expression")
        x1, y1, x2, y2 = parse_box(region)
        problem = box_problem(x1, y1, x2, y2, w, h)
        if problem:
            raise ValueError(f"region {region}: {problem}")

    def build_sample(self, cols, train):
        uniq_id, image, text, region = cols
        patch, w, h = load_image(image, self.image_settings)
        size = self.cfg.patch_image_size
        w_ratio, h_ratio = size / w, size / h
        box = parse_box(region)
        resized = [box[0] * w_ratio, box[1] * h_ratio, box[2] * w_ratio, box[3] * h_ratio]
        bins = torch.tensor(quantize_box(resized, self.cfg.num_bins, self.cfg.max_image_size)) + self.bin0
        prev, tgt = self.decoder_io(bins)
        instruction = ' which region does the text " {} " describe?'.format(clean_text(text, self.cfg.max_src_length))
        meta = {"w_resize_ratio": w_ratio, "h_resize_ratio": h_ratio, "num_bins": self.cfg.num_bins,
                "max_image_size": self.cfg.max_image_size}
        return {"uniq_id": uniq_id, "source": self.source(instruction), "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": box, "meta": meta}

    def build_generator(self, models, args, **kwargs):
        # exactly four location tokens, then eos, whatever the lengths given (as OFA); the caller's
        # generation options are left as they were
        args = Namespace(**{**(dict(args.items()) if isinstance(args, DictConfig) else vars(args)),
                            "max_len_a": 0, "max_len_b": 4, "min_len": 4})
        return super().build_generator(self.restrict(models, self.allowed), args, **kwargs)

    def next_token_rule(self, source, generation):
        bins, eos = self.allowed.nonzero().flatten(), [self.dictionary.eos()]
        bins = bins[bins != eos[0]]

        def rule(tokens, lprobs):  # four location tokens after the bos, then eos (build_generator's lengths)
            allow_only(lprobs, bins if len(tokens) <= 4 else eos)
        return rule

    def sample_score(self, hypothesis, reference, meta):
        box = bins_to_box(hypothesis, meta["num_bins"], meta["max_image_size"], meta["w_resize_ratio"],
                          meta["h_resize_ratio"])
        return acc_at_iou(box, reference)
