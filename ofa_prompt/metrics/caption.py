"""Caption metrics through pycocoevalcap (CIDEr, BLEU-4, METEOR, ROUGE-L), all references of an image."""
import logging
import re
import shutil
from typing import Dict, List

logger = logging.getLogger(__name__)

# The punctuation the PTB tokenizer wrapper of pycocoevalcap drops.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
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
