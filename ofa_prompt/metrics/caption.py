"""Caption metrics through pycocoevalcap (CIDEr, BLEU-4, METEOR, ROUGE-L), all references of an image; BLEU's
counts for corpus BLEU over validation batches; CIDEr-D over fixed document frequencies (the SCST reward)."""
import logging
import math
import re
import shutil
from collections import Counter
from typing import Dict, List

logger = logging.getLogger(__name__)

# The punctuation the PTB tokenizer wrapper of pycocoevalcap drops.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_warned = False


def simple_tokenize(text: str) -> str:
    """A pure-Python stand-in for the PTB tokenizer: lowercase, punctuation split off and dropped."""
    tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())
    return " ".join(t for t in tokens if t not in PUNCTUATIONS and not re.fullmatch(r"[^\w']", t))


def java_available() -> bool:
    return shutil.which("java") is not None


def tokenize(texts: Dict[object, List[str]]) -> Dict[object, List[str]]:
    global _warned
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in texts.items()})
    if not _warned:
        logger.warning("java not found: captions are tokenized in Python and METEOR is not computed")
        _warned = True
    return {k: [simple_tokenize(c) for c in v] for k, v in texts.items()}


def caption_scores(hyps: Dict[object, str], refs: Dict[object, List[str]], per_image: bool = False):
    """{"CIDEr", "Bleu_4", "METEOR", "ROUGE_L"} of one hypothesis per image against its references
    (METEOR only where Java is available); with per_image, also each image's CIDEr in hyps' order."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hyps:
        return ({}, []) if per_image else {}
    missing = [k for k in hyps if not refs.get(k)]
    if missing:
        raise ValueError(f"no references for {len(missing)} hypotheses (e.g. id {missing[0]})")
    ids = list(hyps)
    res = tokenize({k: [hyps[k]] for k in ids})
    gts = tokenize({k: list(refs[k]) for k in ids})
    cider, cider_each = Cider().compute_score(gts, res)
    out = {"CIDEr": cider, "Bleu_4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
           "ROUGE_L": Rouge().compute_score(gts, res)[0]}
    if java_available():
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = Meteor().compute_score(gts, res)[0]
    out = {k: float(v) for k, v in out.items()}
    return (out, [float(c) for c in cider_each]) if per_image else out


# --- corpus BLEU-4 from per-caption counts ------------------------------------------------------------
BLEU_KEYS = ["testlen", "reflen"] + [f"{kind}_{k}" for kind in ("guess", "correct") for k in range(4)]


def bleu_stats(hyp: str, refs: List[str]) -> Dict[str, float]:
    """pycocoevalcap's BLEU counts of one tokenized caption: its length, the closest reference length, and
    per n-gram order the n-grams guessed and the clipped matches. Summed over captions, they give the corpus
    BLEU that its Bleu(4) computes (the counts add up across validation batches and workers, a score would not)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    cooked = cook_test(hyp, cook_refs(refs), eff="closest")
    out = {"testlen": cooked["testlen"], "reflen": cooked["reflen"]}
    for k in range(4):
        out[f"guess_{k}"], out[f"correct_{k}"] = cooked["guess"][k], cooked["correct"][k]
    return out


def bleu4_from_stats(stats: Dict[str, float]) -> float:
    """Corpus BLEU-4 from summed `bleu_stats`, with pycocoevalcap's smoothing constants and brevity penalty."""
    tiny, small = 1e-15, 1e-9
    product = 1.0
    for k in range(4):
        product *= (stats[f"correct_{k}"] + tiny) / (stats[f"guess_{k}"] + small)
    bleu = product ** 0.25
    ratio = (stats["testlen"] + tiny) / (stats["reflen"] + small)
    return bleu * math.exp(1 - 1 / ratio) if ratio < 1 else bleu


# --- CIDEr-D with document frequencies fixed in advance (the SCST reward) -----------------------------
def scst_words(text: str) -> List[str]:
    """A caption as OFA's SCST reward sees it: lower-cased words without punctuation, closed by an <eos>
    word (OFA adds it to match its cached COCO frequencies), so that an unfinished caption is penalized."""
    return simple_tokenize(text).split() + ["<eos>"]


def ngram_counts(words: List[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D, pycocoevalcap's Cider formula (tf-idf n-gram vectors for n = 1..4, hypothesis weights
    clipped by the reference's, a Gaussian length penalty with sigma 6, the mean over n and references,
    times 10), but over document frequencies collected beforehand: OFA's SCST reward takes them from
    the training captions (its pickle of COCO-train frequencies) rather than from the batch scored.

    A document is an image: `add_image(refs)` counts each n-gram once per image."""

    def __init__(self, n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        self.document_frequency: Counter = Counter()
        self.num_images = 0

    def add_image(self, refs: List[List[str]]):
        self.document_frequency.update({g for ref in refs for g in ngram_counts(ref, self.n)})
        self.num_images += 1

    def update(self, other: "CiderD"):
        """Add another collection's images."""
        self.document_frequency.update(other.document_frequency)
        self.num_images += other.num_images

    def _vector(self, words: List[str]):
        """Per n-gram order: {ngram: tf-idf} and the vector's norm; and the caption's length."""
        log_n = math.log(max(self.num_images, 1))
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        for gram, tf in ngram_counts(words, self.n).items():
            weight = tf * (log_n - math.log(max(1.0, self.document_frequency[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        # pycocoevalcap's length is the number of bigrams: lengths compare the same, an empty caption aside
        return vec, [math.sqrt(x) for x in norm], max(len(words) - 1, 0)

    def score(self, hyp: List[str], refs: List[List[str]]) -> float:
        """CIDEr-D of one caption (a list of words) against its image's references."""
        if not refs:
            raise ValueError("CIDEr-D needs at least one reference")
        h_vec, h_norm, h_len = self._vector(hyp)
        total = 0.0
        for ref in refs:
            r_vec, r_norm, r_len = self._vector(ref)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
                if h_norm[k] and r_norm[k]:
                    dot /= h_norm[k] * r_norm[k]
                total += dot * penalty
        return 10.0 * total / (self.n * len(refs))
