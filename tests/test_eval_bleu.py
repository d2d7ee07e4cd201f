"""--eval-bleu (caption): validation logs corpus BLEU-4 as `bleu` (pycocoevalcap's BLEU from counts summed
over the validation batches), beside CIDEr when --eval-cider is given too; --best-checkpoint-metric bleu
works in fairseq-train, and without the flag that logs it is refused before training."""
import subprocess
from argparse import Namespace

import pytest
import torch
from fairseq import metrics
from pycocoevalcap.bleu.bleu import Bleu

from conftest import BIN, MICRO_CLI, NoLoss, build_micro, common, first, make_task, run
from ofa_prompt.metrics.caption import BLEU_KEYS, bleu4_from_stats, bleu_stats

REFS = {0: ["a red square on white", "a red square"], 1: ["a blue square", "the blue square on white"],
        2: ["a green square", "a green box"], 3: ["a red box on white", "red square"]}
HYPS = {0: "a red square", 1: "a square on white", 2: "green green square", 3: "a red box on the white"}


def summed(ids):
    total = {k: 0 for k in BLEU_KEYS}
    for i in ids:
        for k, v in bleu_stats(HYPS[i], REFS[i]).items():
            total[k] += v
    return total


def test_bleu_from_summed_counts_is_pycocoevalcaps_corpus_bleu4():
    expected = Bleu(4).compute_score(REFS, {k: [h] for k, h in HYPS.items()}, verbose=0)[0][3]
    assert bleu4_from_stats(summed(REFS)) == pytest.approx(expected, abs=1e-12)
    # two validation batches: their counts add up to the corpus's; the mean of the batches' BLEU would not
    halves = [summed([0, 1]), summed([2, 3])]
    assert bleu4_from_stats({k: halves[0][k] + halves[1][k] for k in BLEU_KEYS}) == pytest.approx(expected)
    assert (bleu4_from_stats(halves[0]) + bleu4_from_stats(halves[1])) / 2 != pytest.approx(expected)


@pytest.mark.parametrize("flags, logged", [({"eval_bleu": True}, {"bleu"}),
                                           ({"eval_bleu": True, "eval_cider": True}, {"bleu", "cider"}),
                                           ({"eval_cider": True}, {"cider"})])
def test_validation_logs_the_scores_asked_for(data, flags, logged):
    task = make_task("caption", data, **flags)
    torch.manual_seed(0)
    model = build_micro(dictionary=task.dictionary)
    task.valid_generator = task.build_generator([model], Namespace(beam=2, max_len_b=4, min_len=3))
    outputs = [task.valid_step(first(task, n), model, NoLoss())[2] for n in (2, 3)]
    with metrics.aggregate() as agg:
        for log in outputs:  # fairseq-train reduces each validation batch's output as it comes
            task.reduce_metrics([log], NoLoss())
        values = agg.get_smoothed_values()
    assert logged <= set(values) and not ({"bleu", "cider"} - logged) & set(values)
    if "bleu" in logged:
        totals = {k: sum(log[f"_bleu_{k}"] for log in outputs) for k in BLEU_KEYS}
        assert totals["testlen"] > 0 and values["bleu"] == round(bleu4_from_stats(totals), 4)


@pytest.mark.slow
def test_fairseq_train_keeps_the_best_checkpoint_by_bleu(data, tmp_path):
    """The crash this fixes: --best-checkpoint-metric bleu failed with KeyError 'bleu' after the first epoch."""
    base = [f"{BIN}/fairseq-train", f"{data}/caption_train.tsv,{data}/caption_test.tsv", *common("caption", data),
            *MICRO_CLI, "--criterion", "ajust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
            "--batch-size", "6", "--max-epoch", "1", "--num-workers", "0", "--no-epoch-checkpoints",
            "--log-format", "simple", "--eval-args", '{"beam": 2, "max_len_b": 4, "no_repeat_ngram_size": 3}',
            "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric", "--save-dir", str(tmp_path)]
    log = run([*base, "--eval-bleu"])
    valid = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert valid and "| bleu " in valid[-1] and "| cider " not in valid[-1], log[-3000:]
    assert (tmp_path / "checkpoint_best.pt").is_file()  # chosen by bleu
    p = subprocess.run([*base[:-1], str(tmp_path / "refused")], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "--best-checkpoint-metric=bleu needs --eval-bleu" in p.stderr, p.stderr[-2000:]
