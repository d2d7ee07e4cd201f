"""Visual entailment (`--task snli_ve`): yes / no / maybe, chosen among those three answers."""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ..data.tokenize import clean_text
from .base import DECODER_PROMPT_TYPES, OFATask, OFATaskConfig

LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


@dataclass
class SnliVeConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={"help": "validate by accuracy"})
    prompt_type: DECODER_PROMPT_TYPES = field(
        default="none", metadata={"help": "OFA: also feed the instruction to the decoder (src: with eos, prev_output: without)"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(OFATask):
    default_cols = "0,2,3,4,5"
    column_names = "uniq_id, image, hypothesis, caption, label"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.candidates = [self.encode(" " + a) for a in ("yes", "no", "maybe")]

    def check_row(self, cols):
        _, image, hypothesis, caption, label = cols
        self.check_image(image)
        self.check_text(clean_text(hypothesis), "hypothesis")
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {sorted(LABELS)}")

    def instruction(self, hypothesis, caption):
        n = self.cfg.max_src_length
        return ' can image and text1 " {} " imply text2 " {} "?'.format(clean_text(caption, n), clean_text(hypothesis, n))

    def build_sample(self, cols, train):
        uniq_id, image, hypothesis, caption, label = cols
        source = self.source(self.instruction(hypothesis, caption))
        prev, tgt = self.decoder_io(self.encode(" " + LABELS[label]), self.decoder_prefix(source))
        patch, _, _ = self.image(image)
        return {"uniq_id": uniq_id, "source": source, "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": LABELS[label]}

    def generate(self, generator, models, sample):
        return self.choose_candidate(models, sample, self.candidates)

    def sample_score(self, hypothesis, reference, meta):
        return float(hypothesis == reference)
