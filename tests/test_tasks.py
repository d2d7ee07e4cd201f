"""The four tasks: loading and collating OFA TSVs, stock fairseq-train and fairseq-generate runs, and
clear errors for bad rows."""
import sys

import pytest

from conftest import MICRO_CLI, TASKS, common, make_task, run, setup_task as setup

SCORER = {"caption": ("ofa_caption", "CIDEr"), "vqa_gen": ("ofa_vqa", "accuracy"),
          "refcoco": ("ofa_refcoco", "Acc@0.5"), "snli_ve": ("ofa_snli_ve", "accuracy")}


@pytest.mark.parametrize("task", TASKS)
def test_load_and_collate(task, data):
    t = setup(task, data)
    ds = t.datasets["train"]
    assert len(ds) == 12
    batch = ds.collater([ds[i] for i in range(4)])
    net = batch["net_input"]
    assert net["patch_images"].shape == (4, 3, 64, 64) and net["patch_images"].abs().max() <= 1.0
    assert net["src_tokens"][:, 0].eq(t.dictionary.bos()).all()
    assert net["prev_output_tokens"].shape == batch["target"].shape
    unk = t.dictionary.unk()
    assert not net["src_tokens"].eq(unk).any() and not batch["target"].eq(unk).any()
    assert batch["ntokens"] == int(batch["target"].ne(t.dictionary.pad()).sum())
    if task == "refcoco":  # 4 location tokens then eos, the box recovered from them within a bin
        target = batch["target"][0]
        bins = target[:4] - t.dictionary.index("<bin_0>")
        assert ((bins >= 0) & (bins < 100)).all() and target[4] == t.dictionary.eos()
        from ofa_prompt.metrics.grounding import bins_to_box, box_iou
        meta = batch["metas"][0]
        text = " ".join(f"<bin_{b}>" for b in bins.tolist())
        box = bins_to_box(text, 100, 64, meta["w_resize_ratio"], meta["h_resize_ratio"])
        assert box_iou(box, batch["refs"][0]) > 0.9
    if task == "vqa_gen":
        assert batch["conf"].tolist() == [1.0] * 4
    if task == "snli_ve":
        assert t.decode(batch["target"][0]) in {"yes", "no", "maybe"}


def test_a_training_caption_draws_its_reference_by_seed_epoch_and_row(data):
    """A caption with several references (OFA's &&) trains on one drawn at random: the same one whenever
    the same row of the same epoch is read under the same --seed (so that a run repeats, a resumed one
    too), whatever other code drew meanwhile; another epoch or seed may draw another."""
    import random

    import numpy as np

    def targets(seed, epochs=range(1, 9), row=0):
        ds = make_task("caption", data, seed=seed).datasets["train"]
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            random.random(), np.random.rand()  # other draws between the reads
            out.append(tuple(ds[row]["target"].tolist()))
        return out

    once = targets(1)
    assert all(targets(1) == once for _ in range(5))  # 40 reads, each of 2 references: a coin would differ
    assert len(set(once)) == 2  # epochs draw both references
    assert targets(1, row=3) != once or targets(2) != once  # rows and seeds draw apart


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_fairseq_train_then_generate(task, data, tmp_path):
    bin_dir = f"{sys.prefix}/bin"
    train = [f"{bin_dir}/fairseq-train", f"{data}/{task}_train.tsv,{data}/{task}_test.tsv", *common(task, data),
             *MICRO_CLI, "--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length", "4",
             "--decoder-prompt-length", "4", "--criterion", "adjust_label_smoothed_cross_entropy",
             "--optimizer", "adam", "--lr", "0.03", "--batch-size", "6", "--max-update", "2",
             "--save-dir", str(tmp_path), "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple",
             "--log-interval", "1",
             "--eval-acc" if task != "caption" else "--eval-cider", "--eval-args", '{"beam": 2, "max_len_b": 6}',
             "--validate-interval-updates", "2", "--disable-validation" if task == "caption" else "--seed=1"]
    log = run(train)
    assert "num_updates=2" in log and "tuning method prompt" in log
    assert (tmp_path / "checkpoint_last.pt").is_file()
    gen = [f"{bin_dir}/fairseq-generate", f"{data}/{task}_test.tsv", *common(task, data), "--path",
           str(tmp_path / "checkpoint_last.pt"), "--gen-subset", "test", "--beam", "5", "--max-len-b", "6",
           "--batch-size", "4", "--scoring", SCORER[task][0], "--ofa-results-file", str(tmp_path / "results.jsonl")]
    out = run(gen)
    line = [text for text in out.splitlines() if text.startswith("Generate test with beam=5:")]
    assert line and f"{SCORER[task][1]}: " in line[0] and "(6 samples)" in line[0], out[-2000:]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 6


def test_candidate_scoring_reads_given_token_embeddings(data):
    """Text-side attacks hand perturbed embeddings to inference: all-candidate scoring must use them."""
    import torch

    from conftest import build_micro
    from ofa_prompt.tasks.candidates import score_candidates

    t = setup("snli_ve", data)
    model = build_micro(dictionary=t.dictionary).eval()
    ds = t.datasets["train"]
    sample = ds.collater([ds[i] for i in range(3)])
    with torch.no_grad():
        clean = score_candidates(model, sample, t.candidates, t)
        net = {**sample["net_input"], "token_embeddings": torch.zeros(*sample["net_input"]["src_tokens"].shape, 64)}
        moved = score_candidates(model, {**sample, "net_input": net}, t.candidates, t)
    assert not torch.allclose(clean, moved)


@pytest.mark.parametrize("task", ["caption", "refcoco"])
def test_generation_starts_from_bos_as_training_does(task, data):
    """Training feeds <bos> first (prev_output_tokens); OFA's generator starts there too, fairseq's would
    start from <eos>: the first token the decoder sees in generation must be the one it was trained on."""
    from argparse import Namespace

    import torch

    from conftest import build_micro

    t = setup(task, data)
    model = build_micro(dictionary=t.dictionary).eval()
    ds = t.datasets["train"]
    sample = ds.collater([ds[i] for i in range(2)])
    assert sample["net_input"]["prev_output_tokens"][:, 0].eq(t.dictionary.bos()).all()
    first = []
    decoder_forward = model.decoder.forward

    def spy(prev_output_tokens, *args, **kwargs):
        first.append(prev_output_tokens[:, 0].clone())
        return decoder_forward(prev_output_tokens, *args, **kwargs)

    model.decoder.forward = spy
    generator = t.build_generator([model], Namespace(beam=2, max_len_b=4, min_len=1))
    with torch.no_grad():
        hypos = t.generate(generator, [model], sample)
    assert len(hypos) == 2 and first and all(f.eq(t.dictionary.bos()).all() for f in first)


def test_refcoco_generates_four_location_tokens_and_leaves_the_options_alone(data):
    """OFA's refcoco decodes exactly four location tokens whatever the lengths given; the generation options
    fairseq passes in (its cfg.generation, shared with everything else) are not rewritten."""
    from argparse import Namespace

    from conftest import build_micro

    t = setup("refcoco", data)
    model = build_micro(dictionary=t.dictionary).eval()
    given = Namespace(beam=2, max_len_a=1.5, max_len_b=16, min_len=1)
    generator = t.build_generator([model], given)
    assert (generator.max_len_a, generator.max_len_b, generator.min_len) == (0, 4, 4)
    assert vars(given) == {"beam": 2, "max_len_a": 1.5, "max_len_b": 16, "min_len": 1}
