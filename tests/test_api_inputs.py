"""The Python API's inputs (docs/api_inputs.md): every valid request works, every invalid one is refused with
an InputError naming it. mixed() gives what each call gives alone, with each prompt file's own decoding."""

import pytest
import torch

import tiny_data
from ofa_prompt import from_pretrained
from ofa_prompt.data.image import decode_image
from ofa_prompt.errors import InputError

# name -> (task, encoder prompt length, decoder prompt length (0: none on that side), task options)
FILES = {
    "caption": ("caption", 3, 2, {}),
    "vqa": ("vqa_gen", 6, 0, {}),
    "refcoco": ("refcoco", 2, 5, {}),
    "snli": ("snli_ve", 2, 2, {}),
    "snli_caption": ("snli_ve", 2, 2, {"add_caption": True}),
    # decoding recorded by --eval-args, one setting each (the same prompts as "caption" / "vqa")
    "caption_beam1": ("caption", 3, 2, {"eval_args": '{"beam": 1}'}),
    "caption_lenpen": ("caption", 3, 2, {"eval_args": '{"lenpen": 0.0}'}),
    "caption_min_len": ("caption", 3, 2, {"eval_args": '{"min_len": 14}'}),
    "caption_max_len": ("caption", 3, 2, {"eval_args": '{"max_len_b": 4}'}),
    "caption_ngram": ("caption", 3, 2, {"eval_args": '{"no_repeat_ngram_size": 1}'}),
    "vqa_beam1": ("vqa_gen", 6, 0, {"eval_args": '{"beam": 1, "max_len_b": 6}'}),
    # one side only
    "caption_decoder_only": ("caption", 0, 3, {}),
    "refcoco_decoder_only": ("refcoco", 0, 2, {}),
    "caption_encoder_only": ("caption", 4, 0, {}),
}
SEEDS = {"caption": 1, "vqa": 2, "refcoco": 3, "snli": 4}  # by the name's first word: the settings files share prompts


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A micro backbone over the tiny TSVs' words and the prompt files of FILES."""
    return tiny_data.prompt_checkpoints(tmp_path_factory.mktemp("api_inputs"),
                                        {name: (*spec, SEEDS[name.split("_")[0]]) for name, spec in FILES.items()})


def path(files, name):
    return str(files / f"{name}.safetensors")


@pytest.fixture(scope="module")
def model(files):
    return from_pretrained(str(files / "backbone.pt"), bpe_dir=str(files), batch_size=4)


IMAGES = [decode_image(r[4]) for r in tiny_data.rows("refcoco", 4, seed=3)]
FIELDS = {"caption": {}, "vqa_gen": {"question": "what color is the square?"}, "refcoco": {"text": "the red square"}}


def request(files, name, image):
    return {"prompts": path(files, name), "image": image, **FIELDS[FILES[name][0]]}


# --- mixed(): what each call gives alone ------------------------------------------------------------------
SETTINGS = ["caption_beam1", "caption_lenpen", "caption_min_len", "caption_max_len", "caption_ngram", "vqa_beam1"]


def test_mixed_decodes_each_request_with_its_files_settings(files, model, monkeypatch):
    """Prompt files recording other decoding (beam 1, lenpen, min_len, no_repeat_ngram_size, a VQA file at beam 1)
    mixed with the default ones and with other tasks: every request as alone, its file's settings included; one
    search per set of search settings (beam 5, beam 1, lenpen 0), lengths and n-gram blocking per sample."""
    names = ["caption", "vqa", "refcoco", *SETTINGS]
    given = [request(files, name, image) for name in names for image in IMAGES[:2]]
    searches = []
    search = model._search
    monkeypatch.setattr(model, "_search", lambda shared, group: searches.append(len(group)) or search(shared, group))
    outputs = model.mixed(given)
    assert sorted(searches) == [2, 4, 12]
    assert outputs == [tiny_data.alone(model, r) for r in given]
    # each setting changes what its prompts give, so a mix that dropped it would differ (lenpen and min_len do not
    # change these outputs: their beams end at one length, past 14 tokens; they are covered by the equality above)
    for name in (n for n in SETTINGS if n not in ("caption_lenpen", "caption_min_len")):
        base = name.split("_")[0]
        assert [tiny_data.alone(model, request(files, name, im)) for im in IMAGES[:2]] \
            != [tiny_data.alone(model, request(files, base, im)) for im in IMAGES[:2]], name


def test_the_callers_generation_options_apply_to_every_request(files, model):
    given = [request(files, name, IMAGES[0]) for name in ("caption_beam1", "caption_lenpen", "vqa")]
    model.load_prompts(path(files, "caption"))
    assert model.mixed(given, beam=2, max_len_b=3) == [
        tiny_data.alone(model, r, beam=2, max_len_b=3) for r in given]


@pytest.mark.parametrize("names", [("caption_decoder_only", "refcoco_decoder_only"), ("caption_encoder_only", "vqa")])
def test_files_with_prompts_on_one_side_only_mix(files, model, names):
    """No file of the batch has encoder prompts (was: a ValueError from the encoder), or none decoder prompts."""
    given = [request(files, name, image) for name in names for image in IMAGES[:2]]
    assert model.mixed(given) == [tiny_data.alone(model, r) for r in given]


@pytest.mark.parametrize("bad, complaint", [
    ({"candidates": ["red"]}, r"request 0: unknown key\(s\) 'candidates'; a request has 'prompts', 'image', "
                              r"'question', 'text'"),
    ({"qestion": "what?"}, r"unknown key\(s\) 'qestion'"),
    ({"text": "the square"}, r"request 0: prompts for --task vqa_gen take no 'text'"),
    ({"question": ""}, r"request 0's question: '' is empty"),
    ({"question": 3}, r"request 0's question: a int, expected a string"),
])
def test_mixed_refuses_what_it_would_not_use(files, model, bad, complaint):
    given = {**{k: v for k, v in request(files, "vqa", IMAGES[0]).items() if k != "question"}, **bad}
    with pytest.raises(InputError, match=complaint):
        model.mixed([given])


def test_mixed_refuses_keys_of_another_task_and_other_containers(files, model):
    with pytest.raises(InputError, match="request 0: prompts for --task caption take no 'question'"):
        model.mixed([{**request(files, "caption", IMAGES[0]), "question": "what?"}])
    with pytest.raises(InputError, match="takes a list of requests"):
        model.mixed(request(files, "caption", IMAGES[0]))
    with pytest.raises(InputError, match="sampling apply to caption"):
        model.mixed([request(files, "caption", IMAGES[0])], sampling=True)
    assert model.mixed([]) == []


# --- lists that do not match, empty texts, premises ------------------------------------------------------
def test_lists_of_different_lengths_are_refused(files, model):
    model.load_prompts(path(files, "refcoco"))
    with pytest.raises(InputError, match="2 images and 1 texts"):
        model.ground(IMAGES[:2], ["the red square"])
    assert len(model.ground(IMAGES[:2], "the red square")) == 2  # one text for every image
    model.load_prompts(path(files, "snli"))
    with pytest.raises(InputError, match="3 images and 2 hypotheses"):
        model.entail(IMAGES[:3], ["a square", "a red square"])
    model.load_prompts(path(files, "vqa"))
    with pytest.raises(InputError, match="1 images and 2 questions"):
        model.answer([IMAGES[0]], ["what?", "which?"])
    assert model.answer([], []) == []  # an empty batch: no answers


@pytest.mark.parametrize("name, call, complaint", [
    ("vqa", lambda m: m.answer(IMAGES[0], ""), "question 0: '' is empty once punctuation is dropped"),
    ("vqa", lambda m: m.answer(IMAGES[0], " ?! "), r"question 0: ' \?! ' is empty"),
    ("vqa", lambda m: m.answer(IMAGES[0], None), "question 0: a NoneType, expected a string"),
    ("refcoco", lambda m: m.ground(IMAGES[0], ""), "text 0: '' is empty"),
    ("snli", lambda m: m.entail(IMAGES[0], ["a square", "."]), r"hypothesis 1: '\.' is empty"),
])
def test_empty_texts_are_refused_as_the_tsv_reader_refuses_them(files, model, name, call, complaint):
    model.load_prompts(path(files, name))
    with pytest.raises(InputError, match=complaint):
        call(model)


def test_premises_go_with_add_caption_prompts_only(files, model):
    model.load_prompts(path(files, "snli_caption"))
    with pytest.raises(InputError, match=r"tuned with --add-caption: pass premise="):
        model.entail(IMAGES[0], "a red square")
    with pytest.raises(InputError, match="2 hypotheses and 3 premises"):
        model.entail(IMAGES[:2], "a red square", premise=["a", "b", "c"])
    with pytest.raises(InputError, match="premise 1: '' is empty"):
        model.entail(IMAGES[:2], "a red square", premise=["a square", ""])
    labels = model.entail(IMAGES[:2], "a red square", premise=["a square", "a white image"])
    assert len(labels) == 2 and set(labels) <= {"yes", "no", "maybe"}
    model.load_prompts(path(files, "snli"))
    with pytest.raises(InputError, match="premise= is read only by prompts tuned with --add-caption"):
        model.entail(IMAGES[0], "a red square", premise="a square")


# --- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, complaint", [
    (lambda m: m.caption(IMAGES[0], beem=3), r"unknown generation option beem=3: the options are beam, "),
    (lambda m: m.caption(IMAGES[0], beam=0), "beam=0: expected at least 1"),
    (lambda m: m.caption(IMAGES[0], beam="3"), "beam='3': expected an int"),
    (lambda m: m.caption(IMAGES[0], beam=True), "beam=True: expected an int"),
    (lambda m: m.caption(IMAGES[0], temperature=0.0), "temperature=0.0: expected a value above 0"),
    (lambda m: m.caption(IMAGES[0], unnormalized=1), "unnormalized=1: expected a bool"),
])
def test_generation_options_are_checked(files, model, call, complaint):
    model.load_prompts(path(files, "caption"))
    with pytest.raises(InputError, match=complaint):
        call(model)


def test_options_that_would_not_apply_are_refused(files, model):
    model.load_prompts(path(files, "snli"))
    with pytest.raises(InputError, match=r"entail\(\) scores the three answers, without a search: generation "
                                         r"options \(beam\) do not apply"):
        model.entail(IMAGES[0], "a square", beam=3)
    model.load_prompts(path(files, "vqa"))
    with pytest.raises(InputError, match=r"among candidates scores every candidate.*\(beam\)"):
        model.answer(IMAGES[0], "what color?", candidates=["red", "blue"], beam=2)
    with pytest.raises(InputError, match="candidates='red': expected a non-empty list"):
        model.answer(IMAGES[0], "what color?", candidates="red")


def test_loading_options_are_checked(files, model):
    backbone = str(files / "backbone.pt")
    with pytest.raises(InputError, match="unknown task option.* patch_img_size"):
        from_pretrained(backbone, bpe_dir=str(files), patch_img_size=480)
    with pytest.raises(InputError, match="batch_size=0: expected a whole number of at least 1"):
        from_pretrained(backbone, bpe_dir=str(files), batch_size=0)
    with pytest.raises(InputError, match="checkpoint: a int, expected the path"):
        from_pretrained(3, bpe_dir=str(files))
    with pytest.raises(InputError, match="load_prompts: a list, expected the path of one prompt file"):
        model.load_prompts([path(files, "caption"), path(files, "vqa")])


# --- the command line ----------------------------------------------------------------------------------------
def cli_error(files, tmp_path, *argv):
    from ofa_prompt.predict import main

    IMAGES[0].save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", str(files / "backbone.pt"), "--bpe-dir", str(files), *argv, str(tmp_path / "a.png")])
    return str(exit_.value)


@pytest.mark.parametrize("argv, complaint", [
    (["--prompts", "caption", "--candidates", '["red"]'], "--candidates is for --task vqa_gen, not caption"),
    (["--prompts", "vqa", "--question", "what?", "--candidates", "red"], "--candidates 'red' is not JSON"),
    (["--prompts", "caption", "--task", "caption", "--question", "what?"], "--question is for --task vqa_gen, "
                                                                         "not caption"),
    (["--prompts", "caption", "--beam", "0"], "beam=0: expected at least 1"),
    (["--prompts", "snli_caption", "--entail", "a square"], "pass premise= \\(--premise\\)"),
    (["--prompts", "snli", "--entail", "a square", "--beam", "2"], "generation options \\(beam\\) do not apply"),
    (["--prompts", "caption", "--set", "patch_img_size=3"], "unknown task option.* patch_img_size"),
])
def test_the_command_line_refuses_what_it_would_not_use(files, tmp_path, argv, complaint):
    argv = [path(files, a) if argv[i - 1] == "--prompts" else a for i, a in enumerate(argv)]
    message = cli_error(files, tmp_path, *argv)
    assert message.startswith("python -m ofa_prompt.predict: error: ") and "\n" not in message
    assert __import__("re").search(complaint, message), message


# --- files of the wrong kind (ofa_prompt.checkpoint's detection, through the API) ---------------------------
def test_files_of_the_wrong_kind_are_named(files, model, tmp_path):
    with pytest.raises(InputError, match="snli.safetensors is a prompt file"):
        from_pretrained(path(files, "snli"), bpe_dir=str(files))
    with pytest.raises(InputError, match="caption.pt is a torch file .*not a prompt file"):
        model.load_prompts(str(files / "caption.pt"))
    with pytest.raises(InputError, match="caption.pt is a torch file .*not a prompt file"):
        model.mixed([{"prompts": str(files / "caption.pt"), "image": IMAGES[0]}])
    message = cli_error(files, tmp_path, "--prompts", str(files / "caption.pt"))
    assert "caption.pt is a torch file" in message and "\n" not in message


def test_a_prompt_file_whose_header_length_starts_like_a_pickle_is_a_prompt_file(tmp_path):
    """safetensors begins with its header's length (little-endian): 0x80 first, as a pickle begins."""
    from safetensors.torch import save_file

    from ofa_prompt.checkpoint.files import file_kind

    target = tmp_path / "p.safetensors"
    for pad in range(256):
        save_file({"x": torch.zeros(2)}, str(target), metadata={"pad": "a" * pad})
        if target.read_bytes()[0] == 0x80:
            break
    assert target.read_bytes()[0] == 0x80 and file_kind(str(target)) == "safetensors"


def test_the_other_entry_points_refuse_files_of_the_wrong_kind(files, model, tmp_path):
    """attach_prompts, load_model and the prompt_file command take their files through the same checks."""
    from ofa_prompt.hub import load_model
    from ofa_prompt.prompt_file import attach_prompts, main as prompt_file_main

    with pytest.raises(InputError, match="is a torch file .*not a prompt file"):
        attach_prompts(model.model, str(files / "caption.pt"))
    with pytest.raises(InputError, match="is a prompt file"):
        load_model(path(files, "caption"))
    with pytest.raises(InputError, match="is a prompt file"):
        prompt_file_main(["export", path(files, "caption"), str(tmp_path / "out.safetensors")])
    with pytest.raises(InputError, match="checkpoint not found"):
        from_pretrained(str(tmp_path / "missing.pt"), bpe_dir=str(files))
    with pytest.raises(InputError, match="pass bpe_dir="):
        from_pretrained(str(files / "backbone.pt")).caption(IMAGES[0])
    with pytest.raises(InputError, match="chooses among candidates"):
        model.mixed([{"prompts": path(files, "snli"), "image": IMAGES[0]}])
