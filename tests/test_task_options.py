"""OFA's task options keep their meaning: each one changes the built samples, the inference or the
validation as in OFA (tiny TSVs, the micro model; no training unless said)."""
import logging
import os
import pickle
import shutil
import sys
from argparse import Namespace

import pytest
import torch
from fairseq import metrics
from fairseq.criterions import CRITERION_REGISTRY

import tiny_data
from conftest import (  # the `data` fixture is conftest's too
    MICRO_CLI,
    NoLoss,
    build_micro,
    common,
    first,
    make_task,
    run,
)


def words(task, tokens):
    """The text of `tokens` without pad, bos and eos."""
    return task.dictionary.string(tokens[tokens.ne(task.dictionary.pad())])


# --- data options -----------------------------------------------------------------------------------
def test_max_src_length_cuts_sources_and_warns_once(data, caplog):
    task = make_task("snli_ve", data, max_src_length=3)
    with caplog.at_level(logging.WARNING):
        sources = [task.datasets["train"][i]["source"] for i in range(3)]
    assert all(words(task, s) == "does the image" and len(s) == 3 + 2 for s in sources)  # with bos and eos
    cut = [r.getMessage() for r in caplog.records if "was cut to --max-src-length=3" in r.getMessage()]
    assert len(cut) == 1 and 'does the image describe "' in cut[0]


def test_max_tgt_length_cuts_targets(data):
    task = make_task("caption", data, max_tgt_length=2)
    target = first(task)["target"]  # of "a red square" or "a red square on white"
    assert len(target) == 2 + 1 and words(task, target) in {"a red", "a green", "a blue"}  # and eos


def test_selected_cols_read_columns_in_the_given_order(data):
    rows = [[uid, caption, "unused", image] for uid, _, caption, _, image in tiny_data.rows("caption", 3, seed=5)]
    task = make_task("caption", data, train_rows=rows, selected_cols="0,3,1")
    sample = first(task)
    assert sample["uniq_id"] == "0" and sample["ref"] == rows[0][1].split("&&")
    assert sample["patch_image"].shape == (3, 64, 64)


def test_add_object_appends_the_object_labels(data):
    plain, with_objects = make_task("vqa_gen", data), make_task("vqa_gen", data, add_object=True)
    assert words(plain, first(plain)["source"]) == "what color is the square?"
    assert words(with_objects, first(with_objects)["source"]) == "what color is the square? object: square"


@pytest.mark.parametrize("prompt_type", ["none", "src", "prev_output"])
def test_prompt_type_feeds_the_source_to_the_decoder(data, prompt_type):
    task = make_task("vqa_gen", data, prompt_type=prompt_type)
    s = first(task)
    prefix = {"none": s["source"][:1], "src": s["source"], "prev_output": s["source"][:-1]}[prompt_type]
    answer = s["target"][-2:-1]  # one word, then eos
    assert torch.equal(s["prev_output_tokens"], torch.cat([prefix, answer]))
    pad = task.dictionary.pad()
    assert s["target"][:len(prefix) - 1].eq(pad).all() and not s["target"][len(prefix) - 1:].eq(pad).any()


def test_add_caption_chooses_ofas_instruction(data):
    plain, captioned = make_task("snli_ve", data), make_task("snli_ve", data, add_caption=True)
    hypothesis = plain.datasets["train"].reader[0][2]
    assert words(plain, first(plain)["source"]) == f'does the image describe " {hypothesis} "?'
    assert words(captioned, first(captioned)["source"]) == \
        f'can image and text1 " a square on white " imply text2 " {hypothesis} "?'


# --- the answer set ---------------------------------------------------------------------------------
def test_ans2label_pickle_is_read_as_plain_data(data, tmp_path):
    path = tmp_path / "trainval_ans2label.pkl"
    path.write_bytes(pickle.dumps({"red": 0, "green": 1, "blue": 2}))
    assert make_task("vqa_gen", data, ans2label_file=str(path)).answers == ["red", "green", "blue"]


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_ans2label_pickle_naming_code_is_refused_without_running_it(data, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "ans2label.pkl"
    path.write_bytes(pickle.dumps({"red": Hostile(str(marker))}))
    with pytest.raises(ValueError, match=r"--ans2label-file .*ans2label\.pkl.*(os|posix)\.makedirs"):
        make_task("vqa_gen", data, ans2label_file=str(path))
    assert not marker.exists()


def test_vqa_needs_an_answer_set(data):
    with pytest.raises(ValueError, match="pass --ans2label-file"):
        make_task("vqa_gen", data, ans2label_file=None)


# --- inference ----------------------------------------------------------------------------------------
def test_valid_batch_size_is_candidates_per_decoder_pass(data):
    """OFA's --valid-batch-size: how many candidate answers share a decoder pass; the scores do not change."""
    results = {}
    for size in (1, 20):
        task = make_task("vqa_gen", data, valid_batch_size=size)
        torch.manual_seed(0)
        model = build_micro(dictionary=task.dictionary).eval()
        calls = []
        model.decoder.register_forward_hook(lambda *_: calls.append(1))
        with torch.no_grad():
            hypos = task.generate(None, [model], first(task, 4))
        results[size] = (len(calls), [h[0]["tokens"].tolist() for h in hypos], [float(h[0]["score"]) for h in hypos])
    assert results[1][0] == 3 and results[20][0] == 1  # 3 candidate answers
    assert results[1][1] == results[20][1] and results[1][2] == pytest.approx(results[20][2], abs=1e-5)


@pytest.mark.parametrize("prompt_type", ["none", "prev_output"])
def test_beamsearch_generates_only_candidates_and_agrees_with_allcand(data, prompt_type):
    task = make_task("vqa_gen", data, prompt_type=prompt_type, val_inference_type="beamsearch")
    torch.manual_seed(0)
    model = build_micro(dictionary=task.dictionary).eval()
    ds = task.datasets["train"]
    sample = ds.collater([ds[i] for i in (7, 2, 5, 4)])  # fairseq's search names samples by their ids
    generator = task.build_generator([model], Namespace(beam=5, unnormalized=True, max_len_b=40))
    with torch.no_grad():
        beam = [task.decode(h[0]["tokens"]) for h in task.generate(generator, [model], sample)]
        allcand = [task.decode(h[0]["tokens"]) for h in task.choose_candidate([model], sample, task.candidates)]
    assert set(beam) <= {"red", "green", "blue"}
    # with every candidate in the beam and unnormalized scores, beam search finds the most likely answer
    assert beam == allcand


def test_beamsearch_refuses_a_source_prefix_with_eos(data):
    with pytest.raises(ValueError, match="--val-inference-type=beamsearch with --prompt-type=src"):
        make_task("vqa_gen", data, prompt_type="src", val_inference_type="beamsearch")


# --- validation ---------------------------------------------------------------------------------------
def test_valid_step_generates_with_the_ema_model(data):
    task = make_task("snli_ve", data, uses_ema=True)
    assert task.uses_ema
    torch.manual_seed(0)
    live, ema = build_micro(dictionary=task.dictionary), build_micro(dictionary=task.dictionary)
    sample = first(task, 6)
    seen = []
    original = task.choose_candidate
    task.choose_candidate = lambda models, *a: seen.append(models[0]) or original(models, *a)
    *_, with_ema = task.valid_step(sample, live, NoLoss(), ema_model=ema)
    *_, ema_alone = task.valid_step(sample, ema, NoLoss())
    assert seen == [ema, ema] and not ema.training
    assert with_ema["_score_sum"] == ema_alone["_score_sum"] and with_ema["_score_cnt"] == 6


def test_ema_gets_its_own_generator_built_once(data):
    task = make_task("refcoco", data, eval_acc=True, uses_ema=True, eval_args='{"beam": 2}')
    live, ema = build_micro(dictionary=task.dictionary), build_micro(dictionary=task.dictionary)
    task.valid_generator = task.build_generator([live], Namespace(beam=2))
    generator = task.generator_of(ema, live)
    assert generator.model.models[0] is ema and task.generator_of(ema, live) is generator
    assert task.generator_of(live, live) is task.valid_generator


def test_uses_ema_without_store_ema_warns_once(data, caplog):
    task = make_task("snli_ve", data, uses_ema=True)
    model = build_micro(dictionary=task.dictionary)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            task.valid_step(first(task, 2), model, NoLoss())
    assert sum("--uses-ema without --store-ema" in r.getMessage() for r in caplog.records) == 1


def test_eval_print_samples_logs_an_example(data, caplog):
    task = make_task("snli_ve", data, eval_print_samples=True)
    model = build_micro(dictionary=task.dictionary)
    with caplog.at_level(logging.INFO):
        task.valid_step(first(task, 2), model, NoLoss())
    assert any("example hypothesis:" in r.getMessage() and "| reference:" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name, ofa_name", [("vqa_gen", "vqa_score"), ("snli_ve", "snli_score"),
                                            ("refcoco", "score"), ("caption", "cider")])
def test_score_is_logged_under_ofas_name_too(data, name, ofa_name):
    task = make_task(name, data)
    with metrics.aggregate() as agg:
        task.reduce_metrics([{"_score_sum": 1.5, "_score_cnt": 2, "ntokens": 1, "nsentences": 2}], NoLoss())
        values = agg.get_smoothed_values()
    assert values[ofa_name] == 0.75 and values[task.metric] == 0.75


def test_caption_accepts_ofas_cached_cider_tokens_and_says_what_is_used(data, tmp_path, caplog):
    cached = tmp_path / "coco-valid-words.p"
    cached.write_bytes(b"not read")
    with caplog.at_level(logging.WARNING):
        make_task("caption", data, eval_cider=True, eval_cider_cached_tokens=str(cached))
    assert any("is not read" in r.getMessage() and "each batch's references" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="--eval-cider-cached-tokens not found"):
        make_task("caption", data, eval_cider_cached_tokens=str(tmp_path / "missing.p"))


def test_ofas_misspelled_criterion_name():
    from ofa_prompt.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropy

    assert issubclass(CRITERION_REGISTRY["ajust_label_smoothed_cross_entropy"], AdjustLabelSmoothedCrossEntropy)


@pytest.mark.slow
def test_fairseq_train_with_ofas_vqa_options(data, tmp_path):
    """OFA's VQA script options: EMA validation (with stock fairseq 0.12's EMA: a finetuned model's integer
    BatchNorm counters, a prompt-only state dict, a starting checkpoint without EMA state), beam search over
    the pickled answer set, vqa_score as the best-checkpoint metric."""
    answers = tmp_path / "trainval_ans2label.pkl"
    answers.write_bytes(pickle.dumps({"red": 0, "green": 1, "blue": 2}))
    base = [f"{sys.prefix}/bin/fairseq-train", f"{data}/vqa_gen_train.tsv,{data}/vqa_gen_test.tsv",
            *common("vqa_gen", data), *MICRO_CLI, "--ans2label-file", str(answers), "--code-dict-size", "0",
            "--optimizer", "adam", "--batch-size", "6", "--num-workers", "0", "--no-epoch-checkpoints",
            "--log-format", "simple", "--prompt-type", "prev_output", "--add-object", "--store-ema", "--ema-fp32"]
    run([*base, "--lr", "1e-4", "--max-update", "1", "--disable-validation", "--save-dir", str(tmp_path / "finetune")])
    state = torch.load(tmp_path / "finetune" / "checkpoint_last.pt", weights_only=False)
    assert "ema" in state["extra_state"]
    del state["extra_state"]["ema"], state["extra_state"]["ema_fp32_params"]  # as in OFA's released checkpoints
    torch.save(state, tmp_path / "backbone.pt")
    log = run([*base, "--finetune-from-model", str(tmp_path / "backbone.pt"), "--encoder-prompt",
               "--encoder-prompt-length", "4", "--criterion", "ajust_label_smoothed_cross_entropy", "--lr", "0.03",
               "--max-update", "2", "--save-dir", str(tmp_path / "prompt"), "--valid-batch-size", "2", "--uses-ema",
               "--ema-decay", "0.9", "--val-inference-type", "beamsearch",
               "--eval-args", '{"beam": 3, "unnormalized": true, "max_len_b": 40}', "--validate-interval-updates", "2",
               "--best-checkpoint-metric", "vqa_score", "--maximize-best-checkpoint-metric"])
    valid = [line for line in log.splitlines() if "| valid on 'valid' subset" in line]
    assert valid and "| vqa_score " in valid[-1] and "| score " in valid[-1], log[-3000:]
    assert "tuning method prompt" in log and "Loading EMA from checkpoint" in log and "without --store-ema" not in log
    assert (tmp_path / "prompt" / "checkpoint_best.pt").is_file()
    # the prompt-only checkpoint, renamed as OFA's README has it, starts the next run through --finetune-from-model:
    # the backbone is the one it records, its prompts are where the run starts
    shutil.copy(tmp_path / "prompt" / "checkpoint_best.pt", tmp_path / "vqa_prompt_best.pt")
    log = run([*base, "--finetune-from-model", str(tmp_path / "vqa_prompt_best.pt"), "--encoder-prompt",
               "--encoder-prompt-length", "4", "--criterion", "ajust_label_smoothed_cross_entropy", "--lr", "0.03",
               "--max-update", "1", "--save-dir", str(tmp_path / "next"), "--disable-validation"])
    assert "tensors that the checkpoint lacks" not in log, log[-3000:]  # no prompt tensor started fresh
    record = torch.load(tmp_path / "next" / "checkpoint_last.pt", weights_only=False)["model"]["_ofa_prompt_backbone"]
    assert record["path"] == str(tmp_path / "backbone.pt")


def test_ofas_zero_shot_flag_is_refused_with_what_to_do(data):
    with pytest.raises(ValueError, match="--zero-shot .* is not implemented: drop it"):
        make_task("snli_ve", data, zero_shot=True)


def test_a_very_long_caption_is_cut_with_one_warning(data, caplog):
    rows = tiny_data.rows("caption", 3)
    rows[0][2] = " ".join(["red"] * 5000)
    task = make_task("caption", data, train_rows=rows)
    sample = task.datasets["train"][0]
    assert len(sample["target"]) == task.cfg.max_tgt_length + 1  # the words kept, then eos
    task.datasets["train"][0]
    assert sum("a target of 5000 words was cut to --max-tgt-length=30" in r.message for r in caplog.records) == 1
