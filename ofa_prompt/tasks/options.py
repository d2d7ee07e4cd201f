"""The options every OFA task takes (fairseq's --task options, OFATaskConfig), and OFA's --prompt-type."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from ..data.tokenize import TOKENIZERS

# OFA's --prompt-type: also feed the source to the decoder (src: with eos, prev_output: without)
DECODER_PROMPT_TYPES = ChoiceEnum(["none", "src", "prev_output"])


@dataclass
class OFATaskConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={
        "help": "comma-separated TSV files: training epochs cycle through all but the last, other splits read the "
                "last"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "TSV columns to read, in the task's order"})
    # fairseq's --seed: what a training sample draws at random (a caption's reference) is seeded by it, the
    # epoch and the row, so that a run repeats exactly (fairseq leaves an interpolated field off the parser)
    seed: int = II("common.seed")
    bpe_dir: Optional[str] = field(
        default=None, metadata={"help": "folder with dict.txt (and encoder.json, vocab.bpe for gpt2)"})
    text_tokenizer: ChoiceEnum(TOKENIZERS) = field(default="gpt2", metadata={
        "help": "gpt2: OFA's BPE; word: whitespace words listed in <bpe-dir>/dict.txt"})
    max_src_length: int = field(default=128, metadata={"help": "maximum source tokens"})
    max_tgt_length: int = field(default=30, metadata={"help": "maximum target tokens"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> image-code tokens"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location tokens"})
    patch_image_size: int = field(default=480, metadata={"help": "images are resized to this square size"})
    max_image_size: int = field(default=512, metadata={"help": "coordinate range the location bins cover"})
    imagenet_default_mean_and_std: bool = field(
        default=False, metadata={"help": "ImageNet normalization instead of 0.5/0.5"})
    skip_bad_rows: bool = field(default=False, metadata={"help": "skip (and count) bad TSV rows instead of stopping"})
    image_feature_cache: ChoiceEnum(["none", "memory", "disk"]) = field(default="none", metadata={
        "help": "keep the frozen ResNet's features of each training and validation image (prompt tuning, adapters, "
                "BitFit; refused for finetuning), so that later epochs look them up instead of computing them: "
                "in memory, or in a memory-mapped file <save-dir>/image_features.npy"})
    image_feature_cache_mb: int = field(default=4096, metadata={
        "help": "the most --image-feature-cache may hold, in MB (at 480 px: 1.76 MB an image in float16, 3.5 MB in "
                "float32); further images are computed as usual"})
    image_feature_cache_dtype: ChoiceEnum(["float16", "float32"]) = field(default="float16", metadata={
        "help": "the type --image-feature-cache keeps features in: float16 (half the room; a step's loss moves by "
                "less than 1e-3 of itself) or float32 (cached steps equal uncached ones to the bit)"})
    decoded_image_cache: ChoiceEnum(["none", "memory", "disk"]) = field(default="none", metadata={
        "help": "keep each training row's image after its first decoding (resized, uint8), so that later epochs do not "
                "decode it again; any --tuning-method: in shared memory, or in a memory-mapped file "
                "<save-dir>/decoded_images.npy"})
    decoded_image_cache_mb: int = field(default=4096, metadata={
        "help": "the most --decoded-image-cache may hold per training file, in MB (0.66 MB an image at 480 px); the "
                "rows beyond it are decoded every epoch"})
    no_tsv_index: bool = field(default=False, metadata={
        "help": "check every TSV row at every start-up and keep no record of it; by default a record of the check is "
                "kept beside the file (.NAME.ofa-index.npz, else under ~/.cache/ofa_prompt), and later runs on the "
                "unchanged file with the same task options use it instead of checking again"})
    eval_args: str = field(default="{}", metadata={"help": 'generation options for validation, e.g. \'{"beam":5}\''})
    eval_print_samples: bool = field(default=False, metadata={"help": "log hypotheses and references in validation"})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "OFA's polynomial_decay warmup: this fraction of all updates, which fairseq-train counts from "
                "--max-epoch and the training data (as OFA's train.py does; the numbers are logged)"})
    uses_ema: bool = field(default=False, metadata={
        "help": "with --store-ema, validation generates (and scores) with the EMA model, as in OFA"})
    ema_eval: bool = field(default=False, metadata={
        "help": "fairseq-generate: evaluate the EMA weights each --path checkpoint saved (fairseq-train --store-ema), "
                "not its live ones, as OFA's evaluate.py --ema-eval; a checkpoint without EMA weights is an error"})
    prompt_file: Optional[str] = field(default=None, metadata={
        "help": "fairseq-generate: evaluate the prompts of this exported prompt file (python -m ofa_prompt.prompt_file "
                "export) on the --path backbone; the task settings the file records apply as a checkpoint's do"})
    zero_shot: bool = field(default=False, metadata={
        "help": "refused: OFA's evaluate.py --zero-shot generates without the task's answer constraints, which is not "
                "implemented; without it a pretrained checkpoint is evaluated with the task's own inference"})
