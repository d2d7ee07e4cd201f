"""OFA's VQA options: --beam-search-vqa-eval (evaluate.py's flag for beam search over the candidate answers),
--unconstrained-training (open-ended VQA: no answer set, the loss over the whole vocabulary, free beam
search), and OFA's constrained training that is the default (the loss normalized over the tokens that
continue a candidate answer)."""
import json
import logging
import sys
from argparse import Namespace

import pytest
import torch
from omegaconf import OmegaConf

import tiny_data
from conftest import MICRO_CLI, build_micro, common, first, make_task, run
from ofa_prompt.tasks.vqa import answer_constraint_masks, answer_coverage, answer_trie, inference_type

COLORS = {"red", "green", "blue"}


# --- which inference: one decision, contradictions refused ------------------------------------------
@pytest.mark.parametrize("given, flag, unconstrained, answers, expected", [
    (None, False, False, "a.pkl", "allcand"),  # OFA's default
    (None, True, False, "a.pkl", "beamsearch"),  # evaluate.py --beam-search-vqa-eval
    ("beamsearch", True, False, "a.pkl", "beamsearch"),  # both, agreeing
    ("beamsearch", False, False, "a.pkl", "beamsearch"),
    (None, False, True, None, "beamsearch"),  # open-ended: nothing to score all of
    ("beamsearch", True, True, None, "beamsearch"),
])
def test_inference_type(given, flag, unconstrained, answers, expected):
    assert inference_type(given, flag, unconstrained, answers) == expected


@pytest.mark.parametrize("given, flag, unconstrained, answers, error", [
    ("allcand", True, False, "a.pkl", r"--beam-search-vqa-eval .*--val-inference-type=allcand"),
    ("allcand", False, True, None, r"--val-inference-type=allcand .*--unconstrained-training"),
    (None, False, False, None, r"pass --ans2label-file.*or --unconstrained-training"),
    (None, True, False, None, r"pass --ans2label-file.*or --unconstrained-training"),
])
def test_inference_type_refuses_contradictions(given, flag, unconstrained, answers, error):
    with pytest.raises(ValueError, match=error):
        inference_type(given, flag, unconstrained, answers)


def test_beam_search_vqa_eval_selects_beam_search(data):
    """The flag takes the beam-search path (restricted to the candidates), not all-candidate scoring."""
    plain, flagged = make_task("vqa_gen", data), make_task("vqa_gen", data, beam_search_vqa_eval=True)
    assert (plain.inference_type, flagged.inference_type) == ("allcand", "beamsearch")
    torch.manual_seed(0)
    model = build_micro(dictionary=plain.dictionary).eval()
    sample = first(plain, 4)
    used = []
    for task in (plain, flagged):
        original = task.choose_candidate
        task.choose_candidate = lambda *a, original=original: used.append("allcand") or original(*a)
        generator = task.build_generator([model], Namespace(beam=5, unnormalized=True, max_len_b=40))
        used.append(type(generator.search).__name__)
        with torch.no_grad():
            hyps = [task.decode(h[0]["tokens"]) for h in task.generate(generator, [model], sample)]
        assert set(hyps) <= COLORS
    assert used == ["BeamSearch", "allcand", "PerSampleBeamSearch"]


def test_beam_search_flag_with_a_source_prefix_names_the_flag(data):
    with pytest.raises(ValueError, match="--beam-search-vqa-eval with --prompt-type=src"):
        make_task("vqa_gen", data, beam_search_vqa_eval=True, prompt_type="src")


def test_flag_and_allcand_together_are_an_error_from_the_task(data):
    with pytest.raises(ValueError, match="--beam-search-vqa-eval .*--val-inference-type=allcand"):
        make_task("vqa_gen", data, beam_search_vqa_eval=True, val_inference_type="allcand")


# --- OFA's constrained training (the default) -------------------------------------------------------
def test_constraint_masks_follow_the_answer_trie():
    pad, eos, vocab = 1, 2, 10
    candidates = [torch.tensor([5]), torch.tensor([6, 7])]
    trie = answer_trie(candidates, eos)
    target = torch.tensor([
        [5, 2, 1, 1],  # "5", then right padding
        [6, 7, 2, 1],
        [1, 1, 5, 2],  # a decoder prefix (--prompt-type prev_output): pad targets, then the answer
        [8, 2, 1, 1],  # not a candidate
        [6, 2, 1, 1],  # a candidate's beginning only (e.g. cut by --max-tgt-length)
    ])
    masks, free = answer_constraint_masks(target, trie, {(5,), (6, 7)}, pad, vocab)
    allowed = [[set(torch.nonzero(m).flatten().tolist()) for m in row] for row in masks]
    every = set(range(vocab))
    assert allowed[0] == [{5, 6}, {eos}, every, every]
    assert allowed[1] == [{5, 6}, {7}, {eos}, every]
    assert allowed[2] == [every, every, {5, 6}, {eos}]
    assert allowed[3] == allowed[4] == [every] * 4
    assert free == 2


def criterion_for(task, **options):
    from ofa_prompt.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropy

    return AdjustLabelSmoothedCrossEntropy(task, sentence_avg=False, label_smoothing=options.pop("eps", 0.0), **options)


class Backward:
    """What train_step needs of an optimizer."""

    def backward(self, loss):
        loss.backward()


def test_constrained_training_normalizes_over_the_candidate_answers(data):
    """OFA's meaning: the loss at the answer token is -log p(answer | candidates' first tokens), the eos after
    a complete answer costs nothing; --unconstrained-training gives the plain full-vocabulary loss."""
    constrained = make_task("vqa_gen", data)
    open_ended = make_task("vqa_gen", data, ans2label_file=None, unconstrained_training=True)
    torch.manual_seed(0)
    model = build_micro(dictionary=constrained.dictionary)
    sample = first(constrained, 4)
    seen = {}

    class Spy:
        """The real criterion, noting the constraint masks the task hands it."""

        def __init__(self, task):
            self.task, self.real = task, criterion_for(task)

        def forward(self, model, sample, update_num=0):
            seen[self.task] = sample.get("constraint_masks")
            return self.real(model, sample, update_num=update_num)

        __call__ = forward

    _, _, constrained_log = constrained.train_step(sample, model, Spy(constrained), Backward(), 0)
    _, _, open_log = open_ended.train_step(sample, model, Spy(open_ended), Backward(), 0)
    assert seen[constrained] is not None and seen[open_ended] is None

    model.eval()  # the same numbers without dropout, by hand
    with torch.no_grad():
        logits = model(**sample["net_input"])[0].float()
    firsts = [constrained.dictionary.index(c) for c in ("red", "green", "blue")]
    pad, eos = constrained.dictionary.pad(), constrained.dictionary.eos()
    by_hand_constrained = by_hand_open = 0.0
    for b, row in enumerate(sample["target"].tolist()):
        t = next(i for i, token in enumerate(row) if token != pad)  # the answer (one word here), then eos
        lprobs = torch.log_softmax(logits[b, t], -1)
        by_hand_open -= float(lprobs[row[t]] + torch.log_softmax(logits[b, t + 1], -1)[eos])
        by_hand_constrained -= float(torch.log_softmax(logits[b, t, firsts], -1)[firsts.index(row[t])])
    open_ended.valid_generator = open_ended.build_generator([model], Namespace(beam=2, max_len_b=3))
    with torch.no_grad():
        _, _, c_log = constrained.valid_step(sample, model, criterion_for(constrained))
        _, _, o_log = open_ended.valid_step(sample, model, criterion_for(open_ended))
    assert float(c_log["nll_loss"]) == pytest.approx(by_hand_constrained, rel=1e-4)
    assert float(o_log["nll_loss"]) == pytest.approx(by_hand_open, rel=1e-4)
    assert by_hand_constrained < by_hand_open
    assert float(constrained_log["loss"]) < float(open_log["loss"])  # in training too (dropout 0)


def test_an_answer_outside_the_candidates_is_trained_unconstrained_with_a_warning(data, caplog):
    rows = [r[:3] + ["1.0|!+square"] + r[4:] for r in tiny_data.rows("vqa_gen", 2, seed=3)]  # not an answer
    task = make_task("vqa_gen", data, train_rows=rows)
    sample = first(task, 2)
    with caplog.at_level(logging.WARNING):
        out = task.with_constraint_masks(sample)
    assert out["constraint_masks"].all()  # nothing masked: OFA's trie would give an infinite loss
    assert any("not among the --ans2label-file answers" in r.getMessage() for r in caplog.records)


def test_questions_whose_best_answer_is_not_a_candidate_are_counted_at_load(data, caplog):
    refs = ["1.0|!+red", "1.0|!+square&&0.3|!+blue", "0.6|!+square"]  # "square" is not a candidate answer
    rows = [r[:3] + [ref] + r[4:] for r, ref in zip(tiny_data.rows("vqa_gen", 3, seed=3), refs)]
    with caplog.at_level(logging.WARNING):
        make_task("vqa_gen", data, train_rows=rows)
    warned = [r.getMessage() for r in caplog.records if "is not among the 3 --ans2label-file" in r.getMessage()]
    assert len(warned) == 1 and "vqa_gen_custom.tsv: the most confident answer of 2 of 3 questions" in warned[0]
    assert "the best VQA score reachable on these rows is 0.4333" in warned[0]  # (1.0 + 0.3 + 0) / 3
    assert answer_coverage({"a": 0.6, "b": 1.0}, {"a"}) == (0.6, 1.0)


def test_rdrop_is_refused_with_constrained_training(data):
    """The criterion's R-Drop KL runs over the vocabulary the trie masks to -inf: NaN at every step."""
    cfg = OmegaConf.create({"_name": "adjust_label_smoothed_cross_entropy", "use_rdrop": True, "sentence_avg": False})
    with pytest.raises(ValueError, match="--use-rdrop with vqa_gen's constrained training"):
        make_task("vqa_gen", data).build_criterion(cfg)
    task = make_task("vqa_gen", data, ans2label_file=None, unconstrained_training=True)
    assert task.build_criterion(cfg).use_rdrop


# --- open-ended VQA (--unconstrained-training) --------------------------------------------------------
def test_unconstrained_training_ignores_the_answer_file_and_says_so(data, caplog):
    with caplog.at_level(logging.WARNING):
        task = make_task("vqa_gen", data, unconstrained_training=True)  # OFA's script passes both
    assert task.answers is None and task.inference_type == "beamsearch"
    assert any("is not used with --unconstrained-training" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("prompt_type", ["none", "prev_output"])
def test_unconstrained_beam_search_generates_freely(data, prompt_type):
    constrained = make_task("vqa_gen", data, val_inference_type="beamsearch", prompt_type=prompt_type)
    free = make_task("vqa_gen", data, ans2label_file=None, unconstrained_training=True, prompt_type=prompt_type)
    torch.manual_seed(0)
    model = build_micro(dictionary=free.dictionary).eval()
    sample = first(free, 4)
    hyps = {}
    for name, task in (("constrained", constrained), ("free", free)):
        generator = task.build_generator([model], Namespace(beam=3, max_len_b=12))  # the question counts too
        raw = []
        original = generator.generate
        generator.generate = lambda *a, **k: raw.append(original(*a, **k)) or raw[-1]
        with torch.no_grad():
            hyps[name] = [task.decode(h[0]["tokens"]) for h in task.generate(generator, [model], sample)]
        if prompt_type == "prev_output":  # the question is forced first, as OFA's prefix tokens are
            for row, beams in zip(sample["net_input"]["src_tokens"], raw[0]):
                question = row[row.ne(task.dictionary.pad())][1:-1]  # without bos and eos
                assert torch.equal(beams[0]["tokens"][:len(question)], question)
    assert set(hyps["constrained"]) <= COLORS
    assert not set(hyps["free"]) <= COLORS  # a random model, free to say anything


def test_beam_search_too_short_for_the_prefix_gives_empty_answers(data, caplog):
    """fairseq's maximum length counts the forced question (--prompt-type prev_output): a beam search that
    ends before any answer scores it as an empty answer, with a warning, not an IndexError mid-validation."""
    task = make_task("vqa_gen", data, ans2label_file=None, unconstrained_training=True, prompt_type="prev_output")
    model = build_micro(dictionary=task.dictionary).eval()
    generator = task.build_generator([model], Namespace(beam=2, max_len_b=2))
    with caplog.at_level(logging.WARNING), torch.no_grad():
        hypos = task.generate(generator, [model], first(task, 3))
    assert [task.decode(h[0]["tokens"]) for h in hypos] == ["", "", ""]
    assert any("raise --max-len-b" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_fairseq_train_and_generate_open_ended(data, tmp_path):
    """OFA's open-ended VQA end to end: fairseq-train --unconstrained-training without an answer set, with
    validation (beam search, scored by VQA accuracy); then OFA's evaluate_vqa_unconstrained.sh command line
    (no --ans2label-file, --beam-search-vqa-eval, --unnormalized, --temperature), which takes
    --unconstrained-training from the checkpoint."""
    bin_dir = f"{sys.prefix}/bin"
    log = run([f"{bin_dir}/fairseq-train", f"{data}/vqa_gen_train.tsv,{data}/vqa_gen_test.tsv",
               *common("vqa_gen", data, answers=False), *MICRO_CLI, "--unconstrained-training",
               "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
               "--batch-size", "6", "--max-update", "2", "--save-dir", str(tmp_path), "--num-workers", "0",
               "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1", "--prompt-type",
               "prev_output", "--eval-args", '{"beam": 2, "max_len_b": 12}', "--validate-interval-updates", "2",
               "--best-checkpoint-metric", "vqa_score", "--maximize-best-checkpoint-metric"])
    valid = [line for line in log.splitlines() if "| valid on 'valid' subset" in line]
    assert valid and "| vqa_score " in valid[-1], log[-3000:]
    out = run([f"{bin_dir}/fairseq-generate", f"{data}/vqa_gen_test.tsv", *common("vqa_gen", data, answers=False),
               "--path", str(tmp_path / "checkpoint_last.pt"), "--gen-subset", "test", "--batch-size", "4",
               "--beam-search-vqa-eval", "--beam", "3", "--unnormalized", "--temperature", "1.0", "--max-len-b", "12",
               "--scoring", "ofa_vqa", "--ofa-results-file", str(tmp_path / "results.jsonl")])
    line = [text for text in out.splitlines() if text.startswith("Generate test with beam=3:")]
    assert line and "accuracy: " in line[0] and "(6 samples)" in line[0], out[-3000:]
    results = [json.loads(row) for row in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6 and all(r["score"] == r["references"].get(r["hypothesis"], 0.0) for r in results)
