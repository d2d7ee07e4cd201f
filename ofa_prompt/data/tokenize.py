"""Text to dictionary symbols: OFA's GPT-2 BPE (files from --bpe-dir, never downloaded) or plain words."""
import os
import re

TOKENIZERS = ["gpt2", "word"]


def clean_text(text: str, max_words: int = 0) -> str:
    """OFA's caption/question normalization: lowercase, most punctuation dropped, spaces collapsed."""
    text = re.sub(r"([.!\"()*#:;~?,])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text.replace("-", " ").replace("/", " ")).strip()
    words = text.split(" ")
    return " ".join(words[:max_words]) if max_words else text


class WordTokenizer:
    """Whitespace-separated lowercase words; the words are the dictionary's symbols."""

    def encode(self, text: str) -> str:
        return " ".join(text.lower().split())

    def decode(self, text: str) -> str:
        return text

    def whole_characters(self, symbols, n: int) -> int:
        return n  # every symbol is a whole word


class GPT2Tokenizer:
    """OFA's byte-level BPE: encode gives space-separated BPE ids (OFA's dict.txt symbols)."""

    def __init__(self, bpe_dir: str):
        from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

        files = {name: os.path.join(bpe_dir, name) for name in ("encoder.json", "vocab.bpe")}
        for name, path in files.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--bpe-dir {bpe_dir}: {name} not found (OFA ships it in utils/BPE)")
        self.bpe = GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=files["encoder.json"], gpt2_vocab_bpe=files["vocab.bpe"]))

    def encode(self, text: str) -> str:
        return self.bpe.encode(text)

    def whole_characters(self, symbols, n: int) -> int:
        """The largest k <= n such that the first k BPE symbols end on a character boundary: byte-level BPE
        splits a multi-byte (e.g. Chinese) character over several symbols, and cutting between them would
        leave half a character (decoded as U+FFFD)."""
        encoder = self.bpe.bpe
        raw = [bytes(encoder.byte_decoder[c] for c in encoder.decoder[int(s)]) if s.isdigit() else s.encode()
               for s in symbols[:n]]
        for k in range(n, 0, -1):
            try:
                b"".join(raw[:k]).decode("utf-8")
                return k
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":  # invalid inside, not cut at the end: keep as is
                    return n
        return 0

    def decode(self, text: str) -> str:
        # location tokens are not BPE ids: decode the runs between them
        parts = re.split(r"(<bin_\d+>|<code_\d+>)", text)
        out = [p if p.startswith("<") else self.bpe.decode(p.strip()) if p.strip() else "" for p in parts]
        return " ".join(o.strip() for o in out if o.strip())


def build_tokenizer(kind: str, bpe_dir: str):
    if kind == "word":
        return WordTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer(bpe_dir)
    raise ValueError(f"--text-tokenizer={kind}: choose one of {TOKENIZERS}")
