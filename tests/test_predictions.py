"""Predictions files: fairseq-generate --results-path DIR writes DIR/{gen_subset}_predict.json with the keys
OFA's evaluate.py writes (what OFA's coco_eval.py and the VQA server read), atomically and with the user's
umask; --ofa-results-file keeps writing JSON lines. OFA's command lines give no --scoring: the task's
scorer is used."""
import json
import os
import stat
import sys

import pytest
from omegaconf import OmegaConf

from conftest import MICRO_CLI, REPO, common, drive, run
from ofa_prompt.atomic_file import write_atomically
from ofa_prompt.fairseq_compat.config import explicit_options
from ofa_prompt.metrics.grounding import quantize_box
from ofa_prompt.metrics.scorers import (
    CaptionScorer,
    OFAScorerConfig,
    RefcocoScorer,
    SNLIVEScorer,
    VQAScorer,
    ofa_caption_text,
    predictions_path,
    use_task_scorer,
)
from ofa_prompt.metrics.vqa import question_id


def config(tmp_path, **kwargs):
    return OFAScorerConfig(**{"results_path": str(tmp_path / "results"), "gen_subset": "val", **kwargs})


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- each task's predictions, as OFA's utils/eval_utils.py writes them ------------------------------
@pytest.mark.slow
def test_caption_predictions_read_as_coco_eval_reads_them(tmp_path):
    """run_scripts/caption/coco_eval.py: COCO(label_file).loadRes(res_file), a JSON list of {image_id, caption}."""
    from pycocotools.coco import COCO

    items = [("391895", ["a man riding a bike."], {}, "a man, riding a bike."),
             ("60623", ["two dogs"], {}, "two dogs!")]
    drive(CaptionScorer(config(tmp_path)), items)
    path = tmp_path / "results" / "val_predict.json"
    predictions = json.loads(path.read_text())
    assert predictions == [{"image_id": "391895", "caption": "a man riding a bike"},
                           {"image_id": "60623", "caption": "two dogs"}]  # OFA drops ASCII punctuation
    labels = tmp_path / "test_caption_coco_format.json"  # OFA's ground truth names images as the TSV's ids
    labels.write_text(json.dumps({
        "info": {}, "licenses": [], "type": "captions", "images": [{"id": "391895"}, {"id": "60623"}],
        "annotations": [{"image_id": "391895", "id": 1, "caption": "a man riding a bike"},
                        {"image_id": "60623", "id": 2, "caption": "two dogs on grass"}]}))
    results = COCO(str(labels)).loadRes(str(path))
    assert sorted(results.getImgIds()) == ["391895", "60623"]
    assert results.imgToAnns["60623"][0]["caption"] == "two dogs"


def test_vqa_predictions_have_question_ids_and_answers(tmp_path):
    items = [("262148000", {"yes": 1.0}, {}, "yes"), ("7", {"2": 0.6}, {}, "two"), ("q-x", {"red": 1.0}, {}, "red")]
    drive(VQAScorer(config(tmp_path)), items)
    predictions = json.loads((tmp_path / "results" / "val_predict.json").read_text())
    # the VQA server's format: integer question ids (OFA writes int(uniq_id)); a non-numeric id stays as it is
    assert predictions == [{"question_id": 262148000, "answer": "yes"}, {"question_id": 7, "answer": "two"},
                           {"question_id": "q-x", "answer": "red"}]
    assert question_id(" 12 ") == 12 and question_id("-3") == -3 and question_id("1e5") == "1e5"


def test_refcoco_and_snli_ve_predictions(tmp_path):
    meta = {"num_bins": 1000, "max_image_size": 512, "w_resize_ratio": 1.0, "h_resize_ratio": 1.0}
    good = " ".join(f"<bin_{b}>" for b in quantize_box([10, 10, 100, 100], 1000, 512))
    drive(RefcocoScorer(config(tmp_path)),
          [("r1", [10, 10, 100, 100], meta, good), ("r2", [1, 1, 5, 5], meta, "<bin_1>")])
    boxes = json.loads((tmp_path / "results" / "val_predict.json").read_text())
    assert [sorted(p) for p in boxes] == [["box", "uniq_id"]] * 2 and boxes[1] == {"uniq_id": "r2", "box": None}
    assert boxes[0]["uniq_id"] == "r1" and boxes[0]["box"] == pytest.approx([10, 10, 100, 100], abs=0.6)
    drive(SNLIVEScorer(config(tmp_path, gen_subset="test")), [("s1", "yes", {}, "yes"), ("s2", "no", {}, "maybe")])
    assert json.loads((tmp_path / "results" / "test_predict.json").read_text()) == [{"uniq_id": "s1", "answer": "yes"},
                                                                          {"uniq_id": "s2", "answer": "maybe"}]


def test_no_results_path_no_predictions_file(tmp_path):
    assert predictions_path(OFAScorerConfig()) is None  # the interpolation unresolved: not under fairseq-generate
    assert predictions_path(OFAScorerConfig(results_path=None, gen_subset="val")) is None
    assert predictions_path(config(tmp_path)) == str(tmp_path / "results" / "val_predict.json")
    assert ofa_caption_text(" a dog's ball, (red). ") == "a dogs ball red"


# --- written atomically, with the user's umask --------------------------------------------------------
def test_files_get_the_umask_mode_and_results_file_still_written(tmp_path, umask_027):
    results = tmp_path / "r.jsonl"
    drive(VQAScorer(config(tmp_path, ofa_results_file=str(results))), [("1", {"red": 1.0}, {}, "red")])
    predictions = tmp_path / "results" / "val_predict.json"
    assert mode(predictions) == mode(results) == umask_027  # mkstemp alone would give 0600
    assert json.loads(results.read_text()) == {"id": "1", "hypothesis": "red", "references": {"red": 1.0}, "score": 1.0}
    assert sorted(os.listdir(tmp_path / "results")) == ["val_predict.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "val_predict.json"
    path.write_text("[]")

    def half(f):
        f.write("[{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(str(path), half)
    assert path.read_text() == "[]" and os.listdir(tmp_path) == ["val_predict.json"]


# --- OFA's command lines give no --scoring ---------------------------------------------------------------
def generate_config(argv):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_generation_parser(), argv))


def test_without_scoring_the_task_scorer_is_used(tmp_path, monkeypatch):
    argv = ["test.tsv", "--user-dir", str(REPO / "ofa_prompt"), "--task", "caption", "--path", "x.pt",
            "--results-path", str(tmp_path), "--gen-subset", "val"]
    monkeypatch.setattr(sys, "argv", ["fairseq-generate", *argv])
    cfg = generate_config(argv)
    assert cfg.scoring._name == "bleu"  # fairseq's default
    use_task_scorer(cfg.task, explicit_options(argv))
    assert OmegaConf.to_container(cfg.scoring) == {"_name": "ofa_caption", "ofa_results_file": None,
                                                   "results_path": str(tmp_path), "gen_subset": "val"}
    typed = [*argv, "--scoring", "bleu"]
    monkeypatch.setattr(sys, "argv", ["fairseq-generate", *typed])
    cfg = generate_config(typed)
    use_task_scorer(cfg.task, explicit_options(typed))
    assert cfg.scoring._name == "bleu"  # asked for: kept


@pytest.mark.slow
def test_fairseq_generate_with_ofas_vqa_beam_command_line(data, tmp_path):
    """OFA's run_scripts/vqa/evaluate_vqa_beam.sh as fairseq-generate: no --scoring, --results-path,
    --beam-search-vqa-eval --beam 5 --unnormalized --temperature 1.0. The metric line goes where fairseq puts
    it (DIR/generate-test.txt), the predictions to DIR/test_predict.json; scripts/evaluate.sh reads the metric
    from the file."""
    bin_dir = f"{sys.prefix}/bin"
    run([f"{bin_dir}/fairseq-train", f"{data}/vqa_gen_train.tsv,{data}/vqa_gen_test.tsv", *common("vqa_gen", data),
         *MICRO_CLI, "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
         "--batch-size", "6", "--max-update", "1",
         "--save-dir", str(tmp_path), "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation"])
    results = tmp_path / "results"
    out = run([f"{bin_dir}/fairseq-generate", f"{data}/vqa_gen_test.tsv", *common("vqa_gen", data),
               "--path", str(tmp_path / "checkpoint_last.pt"), "--batch-size", "4", "--seed", "7",
               "--gen-subset", "test", "--results-path", str(results), "--beam-search-vqa-eval", "--beam", "5",
               "--unnormalized", "--temperature", "1.0", "--num-workers", "0"])
    assert "Generate test with beam=" not in out
    lines = (results / "generate-test.txt").read_text().splitlines()
    metric = [text for text in lines if text.startswith("Generate test with beam=5:")]
    assert metric and "accuracy: " in metric[0] and "(6 samples)" in metric[0], lines[-20:]
    predictions = json.loads((results / "test_predict.json").read_text())
    assert [p["question_id"] for p in predictions] == list(range(6))  # the TSV's uniq_ids, as integers
    assert {p["answer"] for p in predictions} <= {"red", "green", "blue"}  # beam search over the candidates
    assert sorted(os.listdir(results)) == ["generate-test.txt", "test_predict.json"]

    # scripts/evaluate.sh with results-path set: the metric is read from generate-test.txt
    yaml = tmp_path / "vqa.yaml"
    yaml.write_text(f"""task: vqa_gen
data: {data}/vqa_gen_train.tsv,{data}/vqa_gen_test.tsv
test_data: {data}/vqa_gen_test.tsv
task_options:
  bpe-dir: {data}
  text-tokenizer: word
  ans2label-file: {data}/answers.json
  patch-image-size: 64
  max-image-size: 64
  num-bins: 100
generate:
  batch-size: 4
  beam-search-vqa-eval: true
  results-path: {tmp_path}/by_script
""")
    out = run(["bash", str(REPO / "scripts/evaluate.sh"), str(yaml), str(tmp_path / "checkpoint_last.pt")])
    assert f"wrote its output to {tmp_path}/by_script/generate-test.txt" in out
    assert "metric: accuracy: " in out and "(6 samples)" in out, out[-2000:]
    assert (tmp_path / "by_script" / "test_predict.json").is_file()
