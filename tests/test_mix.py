"""`--task mix`: the four tasks' rows in shared batches for pretraining, each read by its own task;
mistakes in --mix-tasks name the task and the option."""
import json
import subprocess

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import data_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import tiny_data
from conftest import MICRO_CLI, REPO, TASKS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mix")
    tiny_data.write_dict(folder)
    for i, task in enumerate(TASKS):
        tiny_data.write(folder / f"{task}_train.tsv", tiny_data.rows(task, 6 + i, seed=i))
        tiny_data.write(folder / f"{task}_valid.tsv", tiny_data.rows(task, 3, seed=10 + i))
    return folder


def mix_config(data) -> dict:
    mix = {t: {"data": f"{t}_train.tsv,{t}_valid.tsv", "selected_cols": tasks.TASK_REGISTRY[t].default_cols}
           for t in TASKS}
    mix["snli_ve"].update(add_caption=True, max_src_length=40)
    return mix


def mix_json(data) -> str:
    return json.dumps(mix_config(data))


def mix_args(data, mix, *extra):
    return [str(data), "--user-dir", str(REPO / "ofa_prompt"), "--task", "mix", "--bpe-dir", str(data),
            "--text-tokenizer", "word", "--patch-image-size", "64", "--max-image-size", "64", "--num-bins", "100",
            "--mix-tasks", mix, *extra]


def setup(data, mix, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), mix_args(data, mix, *extra, *MICRO_CLI))
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def test_batches_mix_the_tasks_each_read_by_its_own_task(data):
    t = setup(data, mix_json(data))
    t.load_dataset("train")
    ds = t.datasets["train"]
    assert len(ds) == 6 + 7 + 8 + 9
    with data_utils.numpy_seed(1):
        order = ds.ordered_indices()
    assert sorted(order.tolist()) == list(range(len(ds))) and order.tolist() != list(range(len(ds)))
    samples = [ds[int(i)] for i in range(len(ds))]
    assert [s["id"] for s in samples] == list(range(len(ds)))
    # every row went through its own task: caption text, a VQA answer, four location tokens, yes/no/maybe
    bin0 = t.dictionary.index("<bin_0>")
    kinds = [t.tasks["caption"].decode(s["target"]) for s in samples]
    assert all(k.startswith("a ") and "square" in k for k in kinds[:6])
    assert set(kinds[6:13]) <= {"red", "green", "blue"}
    assert all(s["target"][:4].ge(bin0).all() and len(s["target"]) == 5 for s in samples[13:21])
    assert set(kinds[21:]) <= {"yes", "no", "maybe"}
    # the entailment instruction carries the premise caption (add_caption) and is not cut at 16 tokens
    assert "text1" in t.tasks["caption"].decode(samples[-1]["source"]) and len(samples[-1]["source"]) > 18
    batch = ds.collater([samples[i] for i in (0, 7, 15, 25)])
    assert batch["net_input"]["patch_images"].shape == (4, 3, 64, 64)
    assert batch["conf"].tolist() == [1.0, samples[7]["conf"], 1.0, 1.0]
    assert torch.equal(batch["id"], torch.tensor([0, 7, 15, 25]))


def test_validation_reads_each_tasks_evaluation_file(data):
    t = setup(data, mix_json(data))
    t.load_dataset("valid")
    assert len(t.datasets["valid"]) == 4 * 3


def test_decoded_image_cache_reaches_every_mixed_task(data):
    t = setup(data, mix_json(data), "--decoded-image-cache", "memory")
    t.load_dataset("train")
    ds = t.datasets["train"]
    for i in range(len(ds)):
        ds[i]
    assert [p.decoded.kept() for p in ds.parts] == [6, 7, 8, 9]


@pytest.mark.slow
def test_mix_inherits_lengths_but_entries_win(data):
    t = setup(data, mix_json(data), "--max-src-length", "20")
    assert t.tasks["caption"].cfg.max_src_length == 20 and t.tasks["snli_ve"].cfg.max_src_length == 40
    assert t.tasks["refcoco"].cfg.num_bins == 100 and t.tasks["refcoco"].cfg.max_image_size == 64


@pytest.mark.parametrize("task, entry, extra, message", [
    ("translation", {"data": "x.tsv"}, (), "--mix-tasks translation: not a task that can be mixed"),
    ("caption", {"beam": 5}, (), "--mix-tasks caption: 'beam' is not an option of --task caption"),
    ("refcoco", {"patch_image_size": 32}, (), "'patch_image_size' is shared by the mixed tasks"),
    ("caption", {"data": ""}, (), "--mix-tasks caption: 'data' is required"),
    ("caption", {"max_src_length": "long"}, (), "--mix-tasks caption: .*max_src_length"),
    ("vqa_gen", {"unconstrained_training": False}, (), "--mix-tasks vqa_gen: constrained VQA training .* is not "
                                                       "applied to mixed batches"),
    ("caption", {}, ("--selected-cols", "0,4,2"), "--selected-cols=0,4,2: give each task of --task mix its own"),
    ("caption", {}, ("--decoded-image-cache", "disk"), "--decoded-image-cache disk is not applied to --task mix "
                                                       "\\(caption\\): use memory"),
    ("vqa_gen", {"decoded_image_cache": "disk"}, (), "--decoded-image-cache disk is not applied to --task mix "
                                                     "\\(vqa_gen\\)"),
])
def test_mistakes_name_the_task_and_option(data, task, entry, extra, message):
    mix = mix_config(data)
    mix[task] = {**mix.get(task, {}), **entry}
    with pytest.raises(ValueError, match=message):
        setup(data, json.dumps(mix), *extra)


@pytest.mark.parametrize("text", ["{caption: 1}", "[]", "{}"])
def test_mix_tasks_must_be_a_json_mapping(data, text):
    with pytest.raises(ValueError, match="--mix-tasks"):
        setup(data, text)


@pytest.mark.slow
def test_fairseq_train_on_the_mix_then_generate_one_task(data, tmp_path):
    save = tmp_path / "ckpt"
    cmd = ["fairseq-train", *mix_args(data, mix_json(data), *MICRO_CLI, "--tuning-method", "finetune",
                                     "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam",
                                     "--lr", "1e-3", "--batch-size", "8", "--max-update", "3", "--cpu",
                                     "--num-workers", "0", "--save-dir", str(save), "--no-epoch-checkpoints",
                                     "--log-format", "simple", "--log-interval", "1")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "train: 6 rows" in out and "train: 9 rows" in out  # each task's file, read by its task
    assert "valid on 'valid' subset" in out and "num_updates 3" in out
    # the backbone's dictionary is every task's: a single task generates from its checkpoint
    gen = ["fairseq-generate", f"{data}/refcoco_valid.tsv", "--user-dir", str(REPO / "ofa_prompt"), "--task", "refcoco",
           "--bpe-dir", str(data), "--text-tokenizer", "word", "--patch-image-size", "64", "--max-image-size", "64",
           "--num-bins", "100", "--path", str(save / "checkpoint_last.pt"), "--gen-subset", "test", "--beam", "2",
           "--scoring", "ofa_refcoco", "--cpu", "--batch-size", "4"]
    g = subprocess.run(gen, capture_output=True, text=True, timeout=300)
    assert g.returncode == 0 and "Acc@0.5" in g.stdout + g.stderr, (g.stdout + g.stderr)[-3000:]


def test_the_mix_itself_does_not_generate(data):
    with pytest.raises(ValueError, match="generate and score with each task's own --task"):
        setup(data, mix_json(data)).build_generator([], None)
