"""Visual entailment (`--task snli_ve`): yes / no / maybe, chosen among those three answers."""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ..data.image import image_size_of, load_image
from ..data.tokenize import clean_text
from .base import OFATask
from .options import DECODER_PROMPT_TYPES, OFATaskConfig

LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}


@dataclass
class SnliVeConfig(OFATaskConfig):
    eval_acc: bool = field(default=False, metadata={
        "help": "accepted; as in OFA, validation always scores accuracy (logged as score and snli_score)"})
    add_caption: bool = field(default=False, metadata={
        "help": "OFA's option: also give the premise caption in the instruction (the paper's setup)"})
    valid_batch_size: int = field(default=20, metadata={
        "help": "candidate answers scored per decoder pass for each sample (OFA's option; memory only)"})
    prompt_type: DECODER_PROMPT_TYPES = field(
        default="none", metadata={"help": "OFA: also feed the instruction to the decoder (src: with eos, "
                                          "prev_output: without)"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(OFATask):
    default_cols = "0,2,3,4,5"
    column_names = "uniq_id, image, hypothesis, caption, label"
    ofa_metric = "snli_score"

    def __init__(self, cfg, dictionary):
        super().__init__(cfg, dictionary)
        self.candidates = [self.encode(" " + a) for a in ("yes", "no", "maybe")]

    def eval_enabled(self):
        return True  # OFA's snli_ve always scores validation

    def check_row(self, cols):
        _, image, hypothesis, caption, label = cols
        image_size_of(image)  # BadImage where the image is unreadable or truncated
        self.check_text(clean_text(hypothesis), "hypothesis")
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {sorted(LABELS)}")

    def instruction(self, hypothesis, caption):
        """OFA's instructions (data/mm_data/snli_ve_dataset.py), with or without --add-caption."""
        n = self.cfg.max_src_length
        hypothesis = clean_text(hypothesis, n)
        if self.cfg.add_caption:
            return ' can image and text1 " {} " imply text2 " {} "?'.format(clean_text(caption, n), hypothesis)
        return ' does the image describe " {} "?'.format(hypothesis)

    def build_sample(self, cols, train):
        uniq_id, image, hypothesis, caption, label = cols
        source = self.source(self.instruction(hypothesis, caption))
        prev, tgt = self.decoder_io(self.encode(" " + LABELS[label]), self.decoder_prefix(source))
        patch, _, _ = load_image(image, self.image_settings)
        return {"uniq_id": uniq_id, "source": source, "target": tgt, "prev_output_tokens": prev,
                "patch_image": patch, "ref": LABELS[label]}

    def generate(self, generator, models, sample):
        return self.choose_candidate(models, sample, self.candidates)

    def sample_score(self, hypothesis, reference, meta):
        return float(hypothesis == reference)
