"""OFAPredictor.mixed: requests naming different prompt files (of different tasks and lengths) served in one
batch give what each gives alone with its own prompt file."""
import pytest
import torch
from PIL import Image

import tiny_data
from ofa_prompt import from_pretrained
from ofa_prompt.data.image import decode_image
from ofa_prompt.errors import InputError
from ofa_prompt.prompt_file import export_prompts

# task -> prompt lengths (encoder, decoder; 0: none on that side)
PROMPTS = {"caption": (3, 2), "vqa_gen": (6, 0), "refcoco": (2, 5), "snli_ve": (2, 2)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A micro backbone over the tiny TSVs' words and one prompt file per task, each with its own lengths."""
    return tiny_data.prompt_checkpoints(tmp_path_factory.mktemp("mixed"), {
        task: (task, enc, dec, {}, seed) for seed, (task, (enc, dec)) in enumerate(PROMPTS.items(), 1)})


def requests(folder, n=6):
    images = [decode_image(r[4]) for r in tiny_data.rows("refcoco", n, seed=3)]
    kinds = [("caption", {}), ("vqa_gen", {"question": "what color is the square?"}),
             ("refcoco", {"text": "the red square"})]
    return [{"prompts": str(folder / f"{kinds[i % 3][0]}.safetensors"), "image": im, **kinds[i % 3][1]}
            for i, im in enumerate(images)]


def test_a_mixed_batch_gives_what_each_request_gives_alone(files):
    model = from_pretrained(str(files / "backbone.pt"), bpe_dir=str(files), batch_size=4)
    given = requests(files)
    served = model._mixed(given, beam=5)
    outputs = [out for out, _ in served]
    assert outputs == [tiny_data.alone(model, r) for r in given]
    # and the scores, from the hypotheses of each request run alone through the same search
    for request, (_, best) in zip(given, served):
        single = model._mixed([request], beam=5)[0][1]
        assert torch.equal(single["tokens"], best["tokens"])
        assert abs(float(single["score"]) - float(best["score"])) < 1e-5
    # the files differ: serving every request with the caption file's prompts changes outputs
    captions = [{**r, "prompts": str(files / "caption.safetensors")} for r in given if "question" not in r
                and "text" not in r]
    assert model.mixed(captions) == [tiny_data.alone(model, r) for r in captions]
    assert isinstance(outputs[2], list) and len(outputs[2]) == 4  # a box in the image's pixels


def test_a_mixed_batch_keeps_the_prompts_in_use(files):
    model = from_pretrained(str(files / "backbone.pt"), bpe_dir=str(files),
                            prompts=str(files / "caption.safetensors"))
    image = Image.new("RGB", (32, 24), "red")
    before = model.caption(image)
    model.mixed(requests(files, 3))
    assert model.caption(image) == before


def test_mixed_requests_are_checked(files):
    model = from_pretrained(str(files / "backbone.pt"), bpe_dir=str(files))
    image = Image.new("RGB", (8, 8))
    with pytest.raises(InputError, match="needs? the 'question'"):
        model.mixed([{"prompts": str(files / "vqa_gen.safetensors"), "image": image}])
    with pytest.raises(InputError, match="chooses among candidates"):
        model.mixed([{"prompts": str(files / "snli_ve.safetensors"), "image": image}])
    with pytest.raises(InputError, match="request 0: a dict with 'prompts'"):
        model.mixed([image])


def test_prompt_files_record_their_dictionary_and_validated_decoding(files, tmp_path):
    """A prompt file keeps the sha256 of the dict.txt it was tuned with (another one is an error naming both) and
    the task's --eval-args, which become the decoding defaults."""
    import shutil

    from ofa_prompt.checkpoint import read_checkpoint
    from ofa_prompt.prompt_file import load_prompt_file

    state = read_checkpoint(str(files / "caption.pt"))
    state["cfg"]["task"] = {**state["cfg"]["task"], "bpe_dir": str(files), "eval_args": '{"beam": 2, "max_len_b": 2}'}
    torch.save(state, tmp_path / "short.pt")
    export_prompts(str(tmp_path / "short.pt"), str(tmp_path / "short.safetensors"))
    assert len(load_prompt_file(str(tmp_path / "short.safetensors"))[1]["vocabulary"]["dict_sha256"]) == 64
    model = from_pretrained(str(files / "backbone.pt"), bpe_dir=str(files), prompts=str(tmp_path / "short.safetensors"))
    image = Image.new("RGB", (32, 24), "red")
    assert len(model.caption(image).split()) <= 2  # the recorded max_len_b
    assert len(model.caption(image, max_len_b=8).split()) > 2  # the caller's options still win
    other = tmp_path / "other_bpe"
    shutil.copytree(files, other, ignore=shutil.ignore_patterns("*.pt", "*.safetensors"))
    lines = (other / "dict.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]  # as many entries, two words trading ids
    (other / "dict.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="tuned with another dictionary"):
        from_pretrained(str(files / "backbone.pt"), bpe_dir=str(other), prompts=str(tmp_path / "short.safetensors"))
