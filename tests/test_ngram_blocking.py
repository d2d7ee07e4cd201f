"""--no-repeat-ngram-size blocks repeats, in fairseq-generate and in validation (fairseq 0.12's own
Python blocker never does: fairseq issue #5206)."""
from argparse import Namespace

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import tiny_data
from conftest import REPO
from ofa_prompt.ngram_blocking import RepeatedNgramBlocker, block_repeated_ngrams


def ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def test_blocks_exactly_the_tokens_that_complete_a_seen_ngram():
    tokens = torch.tensor([[0, 5, 6, 5], [0, 7, 7, 7]])
    out = block_repeated_ngrams(tokens, torch.zeros(2, 10), 2)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [6]  # (5, 6) seen, the row ends in 5
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [7]
    out = block_repeated_ngrams(tokens, torch.zeros(2, 10), 3)
    assert torch.isinf(out[0]).sum() == 0  # (6, 5) never started a trigram
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [7]  # (7, 7) -> 7 seen
    out = block_repeated_ngrams(tokens, torch.zeros(2, 10), 1)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [0, 5, 6]
    short = block_repeated_ngrams(tokens[:, :2], torch.zeros(2, 10), 3)
    assert torch.isinf(short).sum() == 0


def test_by_brute_force_on_random_rows():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (50, 9), generator=g)
    for n in (2, 3, 4):
        out = block_repeated_ngrams(tokens, torch.zeros(50, 4), n)
        for row, seq in enumerate(tokens.tolist()):
            banned = {gram[-1] for gram in ngrams(seq, n) if list(gram[:-1]) == seq[len(seq) - n + 1:]}
            assert set(torch.isinf(out[row]).nonzero().flatten().tolist()) == banned


def test_blocker_reads_only_the_generated_columns():
    buffer = torch.tensor([[0, 5, 5, 1, 1, 1, 1]])  # step 2: columns 0..2 filled, the rest padding
    out = RepeatedNgramBlocker(2)(buffer, torch.zeros(1, 8), 1, 1, 2)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [5]


@pytest.fixture(scope="module")
def caption_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ngram")
    tiny_data.write_dict(folder)
    tiny_data.write(folder / "test.tsv", tiny_data.rows("caption", 4, seed=3))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        f"{folder}/test.tsv", "--user-dir", str(REPO / "ofa_prompt"), "--task", "caption", "--bpe-dir", str(folder),
        "--text-tokenizer", "word", "--patch-image-size", "32", "--arch", "ofa_prompt_tiny", "--encoder-layers", "1",
        "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--resnet-type", "resnet18"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = task.build_model(cfg.model, from_checkpoint=True).eval()
    with torch.no_grad():  # a model that would repeat "red": its output embedding made the favoured one's
        weight = model.decoder.embed_tokens.weight
        weight[task.dictionary.index("red")] = 3 * weight[task.dictionary.bos()]
    ds = task.datasets["valid"]
    return task, model, ds.collater([ds[i] for i in range(4)]), cfg.model


def hypotheses(task, model, sample, **gen):
    generator = task.build_generator([model], Namespace(beam=3, min_len=8, max_len_b=8, **gen))
    with torch.no_grad():
        return [h[0]["tokens"][:-1].tolist() for h in task.inference_step(generator, [model], sample)]


def test_generation_of_a_repeating_model(caption_task):
    task, model, sample, _ = caption_task
    unblocked = hypotheses(task, model, sample)
    red = task.dictionary.index("red")
    assert all(h.count(red) == 8 for h in unblocked)  # the model does repeat
    for n in (2, 3):
        blocked = hypotheses(task, model, sample, no_repeat_ngram_size=n)
        for h in blocked:
            assert len(set(ngrams(h, n))) == len(ngrams(h, n)), (n, h)


def test_validation_generator_blocks_too(caption_task, tmp_path, monkeypatch):
    # validation generates with the generator build_model makes from --eval-args
    task, model, sample, model_cfg = caption_task
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(task.cfg, "eval_cider", True)
    monkeypatch.setattr(task.cfg, "eval_args", '{"beam": 3, "min_len": 8, "max_len_b": 8, "no_repeat_ngram_size": 2}')
    fresh = task.build_model(model_cfg)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        hypos = task.inference_step(task.valid_generator, [fresh], sample)
    for h in hypos:
        tokens = h[0]["tokens"][:-1].tolist()
        assert len(tokens) == 8 and len(set(ngrams(tokens, 2))) == 7, tokens
