"""Metrics on hand-computed cases, caption scores against pycocoevalcap called directly, and the
scorers driven the way fairseq-generate drives them."""
import json
import math

import pytest

from conftest import drive
from ofa_prompt.metrics import caption as caption_metrics
from ofa_prompt.metrics.caption import caption_scores, simple_tokenize
from ofa_prompt.metrics.grounding import acc_at_iou, bins_to_box, box_iou, dequantize_box, quantize_box
from ofa_prompt.metrics.records import RECORDER
from ofa_prompt.metrics.scorers import CaptionScorer, OFAScorerConfig, RefcocoScorer, SNLIVEScorer, VQAScorer
from ofa_prompt.metrics.vqa import parse_answers, vqa_accuracy, vqa_score

HYPS = {1: "a red circle above a blue square", 2: "two green triangles", 3: "a yellow square."}
REFS = {1: ["A red circle above a blue square.", "a red circle and a blue square"],
        2: ["two green triangles on the left", "a pair of green triangles"],
        3: ["one yellow square", "a yellow square in the middle"]}


def test_box_iou_by_hand():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert acc_at_iou([0, 0, 10, 10], [0, 0, 10, 20]) == 1.0  # IoU exactly 0.5 counts
    assert acc_at_iou([0, 0, 10, 10], [0, 0, 10, 21]) == 0.0
    assert acc_at_iou(None, [0, 0, 1, 1]) == 0.0


def test_box_quantization_round_trip():
    box = [12.3, 40.0, 300.7, 511.0]
    bins = quantize_box(box, 1000, 512)
    assert bins == [round(12.3 / 512 * 999), round(40 / 512 * 999), round(300.7 / 512 * 999), 997]
    assert max(abs(a - b) for a, b in zip(dequantize_box(bins, 1000, 512), box)) <= 512 / 999 / 2 + 1e-9
    text = " ".join(f"<bin_{b}>" for b in bins)
    assert bins_to_box(text, 1000, 512, 2.0, 0.5) == pytest.approx(
        [c / r for c, r in zip(dequantize_box(bins, 1000, 512), (2, .5, 2, .5))])
    assert bins_to_box("<bin_1> <bin_2> <bin_3>", 1000, 512, 1, 1) is None


def test_vqa_scores_by_hand():
    refs = parse_answers("1.0|!+red&&0.6667|!+blue&&0.3333|!+two")
    assert refs == {"red": 1.0, "blue": 0.6667, "two": 0.3333}
    assert vqa_score("blue", refs) == 0.6667 and vqa_score("green", refs) == 0.0
    assert vqa_accuracy("red", ["red", "red", "blue"]) == pytest.approx(2 / 3)
    assert vqa_accuracy("red", ["red"] * 4) == 1.0
    with pytest.raises(ValueError, match="confidence\\|!\\+answer"):
        parse_answers("red&&blue")


@pytest.mark.slow
def test_caption_scores_equal_pycocoevalcap_direct():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = caption_scores(HYPS, REFS)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in HYPS.items()})
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert ours["Bleu_4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert ours["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert ours["METEOR"] == pytest.approx(Meteor().compute_score(gts, res)[0])
    assert ours["CIDEr"] > 0


def test_caption_scores_without_java(monkeypatch, caplog):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    monkeypatch.setattr(caption_metrics, "_warned", False)
    scores = caption_scores(HYPS, REFS)
    assert "METEOR" not in scores and scores["CIDEr"] > 0
    assert "java not found" in caplog.text
    assert simple_tokenize("A red circle, above a Blue square.") == "a red circle above a blue square"


@pytest.mark.slow
def test_scorers_and_results_file(tmp_path):
    out = tmp_path / "r.jsonl"
    text = drive(VQAScorer(OFAScorerConfig(ofa_results_file=str(out))),
                 [("q1", {"red": 1.0}, {}, "red"), ("q2", {"blue": 0.6}, {}, "blue"), ("q3", {"red": 1.0}, {}, "two")])
    assert text.startswith("accuracy: 0.5333") and "(3 samples)" in text
    lines = [json.loads(row) for row in out.read_text().splitlines()]
    assert [row["id"] for row in lines] == ["q1", "q2", "q3"] and lines[1]["score"] == 0.6
    assert list(tmp_path.iterdir()) == [out]
    text = drive(SNLIVEScorer(OFAScorerConfig()), [(1, "yes", {}, "yes"), (2, "no", {}, "maybe")])
    assert text.startswith("accuracy: 0.5000")
    meta = {"num_bins": 1000, "max_image_size": 512, "w_resize_ratio": 1.0, "h_resize_ratio": 1.0}
    good = " ".join(f"<bin_{b}>" for b in quantize_box([10, 10, 100, 100], 1000, 512))
    text = drive(RefcocoScorer(OFAScorerConfig()),
                 [(1, [10, 10, 100, 100], meta, good), (2, [10, 10, 100, 100], meta, "<bin_1>")])
    assert text.startswith("Acc@0.5: 0.5000")
    captions = drive(CaptionScorer(OFAScorerConfig()), [(k, REFS[k], {}, HYPS[k]) for k in HYPS])
    assert captions.startswith("CIDEr: ") and math.isclose(float(captions.split(",")[0].split()[1]),
                                                           caption_scores(HYPS, REFS)["CIDEr"], abs_tol=1e-4)


def test_scorer_without_records_explains():
    RECORDER.clear()
    with pytest.raises(RuntimeError, match="ofa_prompt task"):
        VQAScorer(OFAScorerConfig()).add_string("t", "h")
