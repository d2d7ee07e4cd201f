"""The Python API (ofa_prompt.predictor): the same outputs as fairseq-generate on the same rows, inputs in
the user's terms (PIL images, paths, arrays), and clear errors."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_data
from conftest import BIN, REPO
from ofa_prompt import from_pretrained
from ofa_prompt.api_inputs import rgb_image
from ofa_prompt.checkpoint import read_checkpoint
from ofa_prompt.data.image import decode_image
from ofa_prompt.errors import InputError
from ofa_prompt.prompt_file import export_prompts, load_prompt_file

# the reference fixtures' micro model reads the word tokenizer at 64 px (tests/test_training.py)
OPTIONS = {"text_tokenizer": "word", "patch_image_size": 64}


def predictor(reference, **kw):
    return from_pretrained(str(reference / "prompt.pt"), bpe_dir=str(reference), **OPTIONS, **kw)


# --- inputs -------------------------------------------------------------------------------------------
def test_images_as_paths_arrays_and_tensors_are_the_same_image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "b.png")
    for given in (tmp_path / "a.png", str(tmp_path / "b.png"), pixels, pixels.transpose(2, 0, 1),
                  torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, Image.fromarray(pixels).convert("P")):
        image = rgb_image(given)
        assert image.mode == "RGB" and image.size == (20, 12)
        if not isinstance(given, Image.Image):  # a palette loses colours; the others are exact
            assert np.array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("given, complaint", [
    ("no/such/file.jpg", "image no/such/file.jpg: not a readable image"),
    (np.zeros((4, 4)), r"an array of shape \[4, 4\], expected \[H, W, 3\]"),
    (np.full((4, 4, 3), 2.0), r"a float array must hold values in \[0, 1\]"),
    (np.full((4, 4, 3), np.nan), r"a float array must hold values in \[0, 1\]"),
    (42, "a int, expected a PIL image, a path, or an array"),
])
def test_unusable_images_are_named(given, complaint):
    with pytest.raises(InputError, match=complaint):
        rgb_image(given)


# --- prompt files that say what they are for ----------------------------------------------------------
def caption_checkpoint(reference, tmp_path):
    """prompt.pt as fairseq-train writes it for --task caption (with its task options)."""
    state = read_checkpoint(str(reference / "prompt.pt"))
    state["cfg"]["task"] = {"_name": "caption", "patch_image_size": 64, "text_tokenizer": "word", "max_tgt_length": 7}
    path = tmp_path / "caption.pt"
    torch.save(state, path)
    return path


def test_prompt_files_record_their_task_and_configure_the_predictor(reference, tmp_path):
    prompts = tmp_path / "caption.safetensors"
    export_prompts(str(caption_checkpoint(reference, tmp_path)), str(prompts))
    record = load_prompt_file(str(prompts))[1]["task"]
    assert record["name"] == "caption" and record["options"]["max_tgt_length"] == 7
    model = from_pretrained(str(reference / "plain.pt"), prompts=str(prompts), bpe_dir=str(reference))
    assert model.task("caption").cfg.max_tgt_length == 7 and model.task("caption").cfg.text_tokenizer == "word"
    with pytest.raises(InputError, match="tuned for --task caption, not vqa_gen"):
        model.answer(Image.new("RGB", (8, 8)), "what is it?")


def test_an_older_prompt_file_without_a_task_loads_with_a_warning(reference, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    prompts = tmp_path / "p.safetensors"
    export_prompts(str(caption_checkpoint(reference, tmp_path)), str(prompts))
    meta = load_prompt_file(str(prompts))[1]
    del meta["task"]
    save_file(load_file(str(prompts)), str(prompts), metadata={"ofa_prompt": json.dumps(meta)})
    predictor(reference).load_prompts(str(prompts))
    assert "records no task" in caplog.text


def test_batching_does_not_change_the_answers(reference, tmp_path):
    path = tiny_data.reference_captions(tmp_path / "c.tsv", n=6)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    images = [decode_image(r[4]) for r in rows]
    one_by_one = [predictor(reference, batch_size=1).caption(im, beam=2, max_len_b=4) for im in images]
    assert predictor(reference, batch_size=4).caption(images, beam=2, max_len_b=4) == one_by_one


# --- the same outputs as fairseq-generate ---------------------------------------------------------------
@pytest.fixture(scope="module")
def words_model(tmp_path_factory):
    """A micro model over the tiny TSVs' word dictionary, saved as fairseq-train saves one (random weights,
    so it answers with real words: the reference fixtures' dictionary has none of the answers)."""
    from conftest import build_micro, micro_args
    from ofa_prompt.data.dictionary import build_ofa_dictionary

    folder = tmp_path_factory.mktemp("words")
    tiny_data.write_dict(folder)
    torch.manual_seed(0)
    model = build_micro(dictionary=build_ofa_dictionary(str(folder / "dict.txt"), 0, 100))
    task = {"_name": "ofa", "text_tokenizer": "word", "patch_image_size": 64, "num_bins": 100, "code_dict_size": 0}
    torch.save({"args": None, "cfg": {"model": {**vars(micro_args()), "_name": "ofa_prompt_tiny"}, "task": task},
                "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "-", "optimizer_name": "-", "lr_scheduler_state": {},
                                       "num_updates": 0}]}, folder / "model.pt")
    return folder


def generate(data, task, checkpoint, bpe_dir, *extra):
    cmd = [f"{BIN}/fairseq-generate", str(data), "--user-dir", str(REPO / "ofa_prompt"), "--task", task,
           "--bpe-dir", str(bpe_dir), "--text-tokenizer", "word", "--patch-image-size", "64", "--path",
           str(checkpoint), "--gen-subset", "test", "--batch-size", "3", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    found = dict(re.findall(r"^D-(\d+)\t\S+\t(.*)$", p.stdout, re.M))
    return [found[str(i)] for i in range(len(found))]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["caption", "vqa_gen", "refcoco", "snli_ve"])
def test_the_api_gives_fairseq_generates_outputs(task, reference, words_model, tmp_path):
    """Captions and boxes from the reference fixtures' prompt-tuned micro model, answers and labels from a
    micro model over the tiny TSVs' words; rows in the URL-safe base64 alphabet, batches of 3 vs 16."""
    rows = tiny_data.rows(task, 5, seed=4, urlsafe=True)
    data = tmp_path / "test.tsv"
    tiny_data.write(data, rows)
    if task == "caption":
        expected = generate(data, task, reference / "prompt.pt", reference, "--beam", "3", "--max-len-b", "6")
        model = predictor(reference)
        assert model.caption([decode_image(r[4]) for r in rows], beam=3, max_len_b=6, no_repeat_ngram_size=0) \
            == expected
    elif task == "refcoco":
        expected = generate(data, task, reference / "prompt.pt", reference, "--beam", "3")
        model = predictor(reference)
        images = [decode_image(r[4]) for r in rows]
        boxes = model.ground(images, [r[2] for r in rows], beam=3)
        from ofa_prompt.metrics.grounding import bins_to_box

        cfg = model.task("refcoco").cfg
        assert boxes == [bins_to_box(t, cfg.num_bins, cfg.max_image_size, 64 / im.width, 64 / im.height)
                         for t, im in zip(expected, images)]
        assert all(0 <= b[0] <= b[2] and 0 <= b[1] <= b[3] for b in boxes)  # pixels of the original image
    else:
        model = from_pretrained(str(words_model / "model.pt"), bpe_dir=str(words_model))
        if task == "vqa_gen":
            answers = json.loads((words_model / "answers.json").read_text())
            expected = generate(data, task, words_model / "model.pt", words_model, "--ans2label-file",
                                str(words_model / "answers.json"))
            assert model.answer([decode_image(r[5]) for r in rows], [r[2] for r in rows], candidates=answers) \
                == expected
            assert set(expected) <= set(answers)
        else:
            expected = generate(data, task, words_model / "model.pt", words_model)
            assert model.entail([decode_image(r[2]) for r in rows], [r[3] for r in rows]) == expected
            assert set(expected) <= {"yes", "no", "maybe"}


@pytest.mark.slow
def test_the_command_line_prints_what_the_api_returns(reference, tmp_path):
    rows = tiny_data.rows("refcoco", 2, seed=4)
    paths = []
    for i, r in enumerate(rows):
        paths.append(str(tmp_path / f"{i}.png"))
        decode_image(r[4]).save(paths[-1])
    cmd = [sys.executable, "-m", "ofa_prompt.predict", "--backbone", str(reference / "prompt.pt"), "--bpe-dir",
           str(reference), "--set", "text_tokenizer=word", "--set", "patch_image_size=64", "--json"]
    p = subprocess.run([*cmd, "--ground", "the red square", *paths], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    printed = [json.loads(line) for line in p.stdout.splitlines()]
    assert [x["output"] for x in printed] == predictor(reference).ground(paths, ["the red square"] * 2)
    assert [x["task"] for x in printed] == ["refcoco"] * 2 and [x["image"] for x in printed] == paths
    bad = subprocess.run([*cmd, str(tmp_path / "missing.png")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "predict: error: image 0 " in bad.stderr and "missing.png: not a readable image" in bad.stderr


def readme_snippet() -> str:
    """The API snippet of docs/prompt_files.md (the README's own snippets: tests/test_readme.py)."""
    text = (REPO / "docs" / "prompt_files.md").read_text()
    marker = text.index("<!-- docs snippet: executed by tests/test_predictor.py")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_readme_snippet(tmp_path, monkeypatch, capsys):
    """The README's snippet as written, in a folder holding what it names: a micro backbone over OFA's
    GPT-2 BPE vocabulary (ofa_base.pt), caption and VQA prompt files exported from checkpoints of those tasks,
    OFA's BPE folder and two images."""
    from conftest import BPE, build_micro, micro_args
    from ofa_prompt.data.dictionary import build_ofa_dictionary

    if not (BPE / "encoder.json").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE} (set OFA_BPE_DIR)")
    (tmp_path / "BPE").symlink_to(BPE)
    dictionary = build_ofa_dictionary(str(BPE / "dict.txt"), 0, 100)
    torch.manual_seed(0)
    prompted = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=2, decoder_prompt_length=2)
    model = build_micro(dictionary=dictionary, **prompted)
    args = {**vars(micro_args(**prompted)), "_name": "ofa_prompt_tiny"}
    shared = {"patch_image_size": 64, "num_bins": 100, "code_dict_size": 0}
    state = {"args": None, "model": model.state_dict(), "extra_state": {}, "optimizer_history": []}
    backbone = {k: v for k, v in model.state_dict().items() if "_prompt_encoder." not in k}
    torch.save({**state, "model": backbone, "cfg": {"model": {**vars(micro_args()), "_name": "ofa_prompt_tiny"},
                                                    "task": {"_name": "ofa", **shared}}}, tmp_path / "ofa_base.pt")
    for task, name in (("caption", "caption"), ("vqa_gen", "vqa")):
        torch.save({**state, "cfg": {"model": args, "task": {"_name": task, **shared}}}, tmp_path / f"{name}.pt")
        export_prompts(str(tmp_path / f"{name}.pt"), str(tmp_path / f"{name}.safetensors"))
    for name, color in (("cat.jpg", "black"), ("dog.jpg", "white")):
        Image.new("RGB", (40, 30), color).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_snippet(), "docs/prompt_files.md", "exec"), {})
    captions, answer = capsys.readouterr().out.splitlines()
    assert len(eval(captions)) == 2 and answer in ("black", "white", "grey")


@pytest.mark.slow
def test_fairseq_generate_takes_its_settings_and_prompts_from_a_prompt_file(reference, tmp_path):
    """--path a backbone (pretraining record, no prompts) and --prompt-file: the task options come from the file
    (word tokenizer, 64 px: not on the command line) and the outputs are the tuned checkpoint's own."""
    tuned = caption_checkpoint(reference, tmp_path)
    prompts = tmp_path / "caption.safetensors"
    export_prompts(str(tuned), str(prompts))
    state = read_checkpoint(str(tuned))
    state["model"] = {k: v for k, v in state["model"].items() if "_prompt_encoder." not in k}
    model_cfg = vars(state["cfg"]["model"])  # OFA's code wrote the reference fixtures: a Namespace
    for key in [k for k in model_cfg if k.startswith(("encoder_prompt", "decoder_prompt"))]:
        del model_cfg[key]
    state["cfg"] = {**state["cfg"], "task": {"_name": "ofa", "num_bins": 1000}}
    torch.save(state, tmp_path / "backbone.pt")
    rows = tiny_data.rows("caption", 4, seed=4)
    data = tmp_path / "test.tsv"
    tiny_data.write(data, rows)

    def run(*extra):
        cmd = [f"{BIN}/fairseq-generate", str(data), "--user-dir", str(REPO / "ofa_prompt"), "--task", "caption",
               "--bpe-dir", str(reference), "--gen-subset", "test", "--batch-size", "2", "--beam", "3",
               "--max-len-b", "6", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    expected = run("--path", str(tuned))
    got = run("--path", str(tmp_path / "backbone.pt"), "--prompt-file", str(prompts))
    assert expected.returncode == 0 and got.returncode == 0, got.stderr[-3000:]

    def hypotheses(p):  # id -> (score, text)
        return {i: (float(score), text) for i, score, text in re.findall(r"^D-(\d+)\t(\S+)\t(.*)$", p.stdout, re.M)}

    want, have = hypotheses(expected), hypotheses(got)
    assert len(want) == 4 and {i: t for i, (_, t) in want.items()} == {i: t for i, (_, t) in have.items()}
    assert all(abs(want[i][0] - have[i][0]) < 1e-5 for i in want)  # folded prompts: float rounding only
    assert "prompts from" in got.stderr and "text_tokenizer" in got.stderr  # taken from the file, and said so
    without = run("--path", str(tmp_path / "backbone.pt"), "--text-tokenizer", "word", "--patch-image-size", "64")
    bare = hypotheses(without)
    assert any(abs(bare[i][0] - have[i][0]) > 1e-3 for i in have)  # the prompts took effect
    wrong = run("--path", str(tuned), "--prompt-file", str(prompts))
    assert wrong.returncode != 0 and "has its own" in wrong.stderr and "Traceback" not in wrong.stderr
