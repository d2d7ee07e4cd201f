"""Self-critical sequence training (OFA's caption stage 2: --task caption --scst --criterion
scst_reward_criterion): the advantage and loss formulas, the CIDEr-D reward over the training references'
document frequencies, the criterion on the micro model (with prompts through beam search), a few updates
raising the reward, and fairseq-train with OFA's stage-2 flags for every tuning method."""
import logging
import re
from argparse import Namespace

import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from conftest import BIN, MICRO_CLI, build_micro, common, first, make_task, run
from ofa_prompt import load_model
from ofa_prompt.checkpoint import read_checkpoint
from ofa_prompt.criterions.scst import ScstRewardCriterion, scst_loss, self_critical_advantages
from ofa_prompt.metrics.caption import CiderD, scst_words
from ofa_prompt.models.tuning import is_trainable

PROMPTS = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=4, decoder_prompt_length=4)


# --- the formulas -------------------------------------------------------------------------------------
def test_advantage_is_the_reward_less_the_mean_of_the_images_other_captions():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    expected = torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5], [0 - 3.0, 0 - 3.0, 6 - 0.0]])
    assert torch.allclose(self_critical_advantages(rewards), expected)
    assert torch.allclose(self_critical_advantages(torch.tensor([0.4, 0.4])), torch.zeros(2))  # no preference
    with pytest.raises(ValueError, match="at least 2 captions"):
        self_critical_advantages(torch.tensor([1.0]))


def test_loss_is_minus_advantage_times_summed_log_probability():
    token_lprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])  # -9: padding, ignored
    advantages = torch.tensor([2.0, -1.0])
    assert scst_loss(token_lprobs, mask, advantages).item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -0.5))


def test_cider_d_over_the_scored_images_is_pycocoevalcaps_cider():
    refs = {0: ["a red square on white", "a red square"], 1: ["a blue square", "the blue square on white"],
            2: ["a green square", "a green box"], 3: ["a red box on white", "red square"]}
    hyps = {0: "a red square", 1: "a square on white", 2: "green green square", 3: "a red box"}
    _, expected = Cider().compute_score(refs, {k: [h] for k, h in hyps.items()})
    cider = CiderD()
    for k in refs:
        cider.add_image([r.split() for r in refs[k]])
    ours = [cider.score(hyps[k].split(), [r.split() for r in refs[k]]) for k in refs]
    assert ours == pytest.approx(list(expected), abs=1e-9)


def test_cider_d_weighs_ngrams_by_the_given_document_frequencies():
    refs = [["a", "red", "square"]]
    everywhere, rare = CiderD(), CiderD()
    for _ in range(4):
        everywhere.add_image([["a", "red", "square"]])
        rare.add_image([["a", "blue", "circle"]])
    # n-grams that every image has carry no information (idf 0); the same n-grams seen nowhere else count
    assert everywhere.score(["a", "red", "square"], refs) == 0.0
    assert rare.score(["a", "red", "square"], refs) > rare.score(["a", "blue", "square"], refs) > 0.0


# --- the task: references, rewards, options -----------------------------------------------------------
def test_reward_takes_document_frequencies_from_the_training_references_once(data):
    task = make_task("caption", data, scst=True)
    assert task.scst_cider.num_images == 12  # the 12 training rows
    counted = dict(task.scst_cider.document_frequency)
    task.load_dataset("train")  # another epoch over the same file
    assert task.scst_cider.num_images == 12 and dict(task.scst_cider.document_frequency) == counted
    rows = task.datasets["train"].reader
    refs = [r.split("&&") for _, _, r in (rows[i] for i in range(2))]
    rewards = task.scst_rewards([[refs[0][0], "what is the", refs[1][0]]], refs[:1])
    assert rewards[0][0] > rewards[0][2] >= 0 and rewards[0][1] == 0  # its own reference beats another image's
    # the words every training caption has ("a", "square") are worth nothing; a colour is
    assert task.scst_rewards([["a square", "a red"]], [["a red square"]])[0][0] < \
        task.scst_rewards([["a square", "a red"]], [["a red square"]])[0][1]
    assert scst_words("A red square.") == ["a", "red", "square", "<eos>"]
    assert make_task("caption", data).scst_cider.num_images == 0  # counted for --scst only
    # one file for training and validation, validation loaded first (as fairseq-train does): still counted
    task = make_task("caption", data, scst=True)
    task.cfg.data = f"{data}/caption_test.tsv,{data}/caption_test.tsv"
    task.load_dataset("valid")
    task.load_dataset("train")
    assert task.scst_cider.num_images == 12 + 6


def test_cached_cider_tokens_are_checked_not_read(data, tmp_path, caplog):
    task = make_task("caption", data, scst=True)
    marker = tmp_path / "ran"
    cached = tmp_path / "coco-train-words.p"
    cached.write_bytes(b"cos\nmakedirs\n(V" + str(marker).encode() + b"\ntR.")  # a pickle that creates `marker`
    with caplog.at_level(logging.WARNING):
        ScstRewardCriterion(task, sentence_avg=False, scst_cider_cached_tokens=str(cached))
    assert not marker.exists()
    assert any("--scst-cider-cached-tokens" in r.getMessage() and "is not read" in r.getMessage()
               and "training files" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="--scst-cider-cached-tokens not found"):
        ScstRewardCriterion(task, sentence_avg=False, scst_cider_cached_tokens=str(tmp_path / "missing.p"))


def test_scst_options_refuse_what_cannot_work(data):
    with pytest.raises(ValueError, match="needs --task caption --scst"):
        ScstRewardCriterion(make_task("caption", data), sentence_avg=False)
    with pytest.raises(ValueError, match="needs --task caption --scst"):
        ScstRewardCriterion(make_task("snli_ve", data), sentence_avg=False)
    with pytest.raises(ValueError, match="--scst-args=.*is not JSON"):
        make_task("caption", data, scst=True, scst_args="{beam: 5}").scst_options()
    with pytest.raises(ValueError, match="a beam of at least 2"):
        make_task("caption", data, scst=True, scst_args='{"beam": 1}').scst_options()


def test_sample_patch_num_is_refused_with_what_to_do_instead(data):
    from fairseq import criterions, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        f"{data}/caption_train.tsv,{data}/caption_test.tsv", *common("caption", data), *MICRO_CLI,
        "--criterion", "adjust_label_smoothed_cross_entropy", "--sample-patch-num", "196"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.criterion.sample_patch_num == 196  # accepted by the parser, as OFA's scripts pass it
    with pytest.raises(ValueError, match=r"--sample-patch-num=196: OFA applies it only to its pretraining.*"
                                         r"Remove the option \(lower --patch-image-size"):
        criterions.build_criterion(cfg.criterion, tasks.setup_task(cfg.task))


# --- the criterion on the micro model -----------------------------------------------------------------
def scst_setup(data, scst_args, **model_options):
    task = make_task("caption", data, scst=True, scst_args=scst_args)
    torch.manual_seed(0)
    model = build_micro(dictionary=task.dictionary, **model_options)
    task.scst_generator = task.build_generator([model], Namespace(**task.scst_options()))
    return task, model, ScstRewardCriterion(task, sentence_avg=False)


def test_loss_is_the_formula_over_beam_captions_with_prompts(data):
    """Encoder and decoder prompts, OFA's beam search with trigram blocking, captions of different lengths
    padded into one batch: the loss equals -sum(advantage * log p(caption)) with every caption scored alone.
    Generation runs in eval mode, the scored forward pass in training mode."""
    task, model, criterion = scst_setup(data, '{"beam": 4, "max_len_b": 6, "no_repeat_ngram_size": 3}',
                                        prompt_dropout=0.0, **PROMPTS)
    with torch.no_grad():  # a likelier eos: the beams' captions end at different lengths (else all at max_len_b)
        model.decoder.output_projection.weight[task.dictionary.eos()] *= 1.5
    sample = first(task, 3)
    rewards = [[0.3, 1.2, 0.0, 0.6], [2.0, 0.5, 0.5, 0.1], [0.0, 0.0, 0.9, 0.3]]
    task.scst_rewards = lambda captions, refs: rewards
    modes, decoder_forward = [], model.decoder.forward

    def spy(*args, **kwargs):  # fairseq's generator calls decoder.forward directly: no hook would see it
        modes.append(model.decoder.training)
        return decoder_forward(*args, **kwargs)

    model.decoder.forward = spy
    model.train()
    loss, sample_size, log = criterion(model, sample)
    assert model.training and not modes[0] and modes[-1]  # generated in eval mode, scored in training mode
    captions = criterion.generate_captions(model, sample)
    assert [len(c) for c in captions] == [4, 4, 4] and len({len(c) for cs in captions for c in cs}) > 1
    expected, ntokens = 0.0, 0
    with torch.no_grad():
        for i, (caps, r) in enumerate(zip(captions, rewards)):
            advantages = self_critical_advantages(torch.tensor(r))
            net = {k: v[i:i + 1] for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
            for caption, advantage in zip(caps, advantages):
                prev, target = task.decoder_io(caption[:-1])
                lprobs = model.get_normalized_probs(model(**net, prev_output_tokens=prev[None]), log_probs=True)
                expected -= float(advantage) * float(lprobs[0].gather(-1, target[:, None]).sum())
                ntokens += len(target)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert sample_size == ntokens == log["ntokens"] and log["nsentences"] == 12
    assert log["score"] == pytest.approx(sum(map(sum, rewards)))
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"encoder.encoder_prompt_encoder.embedding.weight",
                       "decoder.decoder_prompt_encoder.embedding.weight"}


def test_training_start_enforces_the_freeze(data, caplog):
    task, model, criterion = scst_setup(data, '{"beam": 2, "max_len_b": 3}', bitfit=True)
    leaked = model.decoder.layers[0].fc1.weight
    leaked.requires_grad_(True)  # e.g. a script that unfroze something after the model was built
    with caplog.at_level(logging.INFO):
        task.begin_epoch(1, model.train())  # as fairseq-train does before the first update
        criterion(model, first(task, 2))
    assert not leaked.requires_grad
    assert any("wrong requires_grad for --tuning-method bitfit" in r.getMessage() for r in caplog.records)
    assert any("tuning method bitfit:" in r.getMessage() for r in caplog.records)


def test_a_few_updates_raise_the_reward_of_sampled_captions(data):
    """Prompt tuning with a reward that counts the word "red": after 6 SCST updates the model's sampled
    captions earn more than before (and only the prompts moved)."""
    task, model, criterion = scst_setup(data, '{"sampling": true, "beam": 8, "max_len_b": 5}', prompt_dropout=0.0,
                                        **PROMPTS)
    task.scst_rewards = lambda captions, refs: [[c.split().count("red") / max(len(c.split()), 1) for c in cs]
                                                for cs in captions]
    sample = first(task, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def mean_reward():
        torch.manual_seed(1)
        rewards = task.scst_rewards([[task.decode(c) for c in cs] for cs in criterion.generate_captions(model, sample)],
                                    None)
        return sum(map(sum, rewards)) / sum(map(len, rewards))

    start = mean_reward()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(6):
        optimizer.zero_grad()
        loss, sample_size, _ = criterion(model.train(), sample)
        (loss / sample_size).backward()
        optimizer.step()
    assert mean_reward() > start + 0.1  # measured: 0.0 -> 0.34
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, p in model.named_parameters() if is_trainable(n, "prompt")}


# --- fairseq-train with OFA's stage-2 flags -----------------------------------------------------------
TUNING = {
    "prompt": ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length", "4", "--decoder-prompt-length", "4"],
    "adapter": ["--adapter", "--adapter-dim", "8"],
    "bitfit": ["--bitfit"],
    "finetune": ["--freeze-encoder-embedding", "--freeze-decoder-embedding"],
}
# --freeze-encoder/decoder-embedding: the shared token embedding, which the output projection ties to
EMBEDDINGS = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"}
# the decoder's image-token positions and norms, used only when generating image codes (OFA's pretraining)
IMAGE_OUTPUT = ("decoder.embed_image_positions.", "decoder.image_pos_ln.", "decoder.image_rel_pos_table_list.",
                "decoder.code_layernorm_embedding.")


@pytest.fixture(scope="module")
def backbone(data, tmp_path_factory):
    """A stage-1 (cross-entropy) checkpoint of the micro model, which stage 2 starts from (named as in OFA's
    script: fairseq-train's --restore-file checkpoint_last.pt would mean resuming, not a backbone)."""
    folder = tmp_path_factory.mktemp("stage1")
    run([f"{BIN}/fairseq-train", f"{data}/caption_train.tsv,{data}/caption_test.tsv", *common("caption", data),
         *MICRO_CLI, "--criterion", "ajust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3",
         "--batch-size", "4", "--max-update", "1", "--num-workers", "0", "--disable-validation",
         "--no-epoch-checkpoints", "--save-dir", str(folder)])
    return (folder / "checkpoint_last.pt").rename(folder / "caption_stage1_best.pt")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TUNING))
def test_fairseq_train_stage2_changes_only_the_trainable_parameters(method, data, backbone, tmp_path):
    cached = tmp_path / "coco-train-words.p"
    cached.write_bytes(b"never read")
    log = run([
        f"{BIN}/fairseq-train", f"{data}/caption_train.tsv,{data}/caption_test.tsv", *common("caption", data),
        *MICRO_CLI, *TUNING[method], "--restore-file", str(backbone), "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--criterion", "scst_reward_criterion", "--scst",
        "--scst-cider-cached-tokens", str(cached),
        "--scst-args", '{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}',  # OFA's
        "--batch-size", "6", "--max-update", "2", "--optimizer", "adam", "--adam-betas", "(0.9,0.999)",
        "--adam-eps", "1e-08", "--clip-norm", "1.0", "--lr", "0.05", "--lr-scheduler", "polynomial_decay",
        "--end-learning-rate", "2e-7", "--total-num-update", "10", "--dropout", "0.0", "--attention-dropout", "0.0",
        "--eval-cider", "--eval-args", '{"beam": 2, "max_len_b": 4, "no_repeat_ngram_size": 3}',
        "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric", "--fixed-validation-seed", "7",
        "--save-interval-updates", "1", "--no-epoch-checkpoints",  # checkpoint_1_1.pt after update 1, of 2
        "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--find-unused-parameters",
        "--seed", "1", "--save-dir", str(tmp_path)])
    assert f"tuning method {method}:" in log and "--scst-cider-cached-tokens" in log and "is not read" in log
    assert "SCST reward: CIDEr-D document frequencies of 12 training images" in log
    assert len(re.findall(r"train_inner .* score=[\d.]+", log)) == 2  # OFA's name for the mean reward
    valid = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert valid and "| cider " in valid[-1] and "| score " in valid[-1], log[-3000:]
    states = [load_model(str(tmp_path / f"checkpoint_{n}.pt")).full_state_dict() for n in ("1_1", "last")]
    start = read_checkpoint(str(backbone))["model"]
    frozen = [k for k in states[0] if not is_trainable(k, method) or (method == "finetune" and k in EMBEDDINGS)]
    assert frozen and all(torch.equal(states[1][k], states[0][k]) and torch.equal(states[0][k], start[k])
                          for k in frozen if k in start)
    trainable = {k for k in states[0] if k not in frozen and not k.endswith(".version")}
    # Adam moves every parameter that had a gradient in either update (zero rewards would move none)
    moved = {k for k in trainable if not torch.equal(states[0][k], states[1][k])}
    assert moved == {k for k in trainable if not k.startswith(IMAGE_OUTPUT)}
