"""Tiny OFA-format TSVs drawn with Pillow, for the task tests: one coloured square per image."""
import base64
import io
import random

from PIL import Image, ImageDraw

COLORS = ["red", "green", "blue"]
WORDS = "a red green blue square on white what color is the".split()


def encode(image, fmt="PNG", urlsafe=False):
    """Base64 as OFA's tools write it: the standard alphabet, or the URL-safe one (urlsafe_b64encode)."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(buf.getvalue()).decode()


def scene(rng, urlsafe=False):
    color = rng.choice(COLORS)
    x, y = rng.randrange(0, 40), rng.randrange(0, 30)
    image = Image.new("RGB", (72, 56), "white")
    ImageDraw.Draw(image).rectangle([x, y, x + 24, y + 20], fill=color)
    return color, (x, y, x + 24, y + 20), encode(image, urlsafe=urlsafe)


def rows(task, n, seed=0, urlsafe=False):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        color, box, image = scene(rng, urlsafe)
        other = rng.choice([c for c in COLORS if c != color])
        if task == "caption":
            out.append([i, i, f"a {color} square&&a {color} square on white", "square", image])
        elif task == "vqa_gen":
            out.append([i, i, "what color is the square?", f"1.0|!+{color}&&0.3333|!+{other}", "square", image])
        elif task == "refcoco":
            out.append([i, i, f"the {color} square", ",".join(map(str, box)), image])
        elif task == "snli_ve":
            hyp, label = rng.choice([(f"a {color} square", "entailment"), (f"a {other} square", "contradiction"),
                                     ("a square", "neutral")])
            out.append([i, i, image, hyp, "a square on white", label])
    return out


def write(path, table):
    with open(path, "w") as f:
        for r in table:
            f.write("\t".join(map(str, r)) + "\n")


def write_dict(folder):
    with open(folder / "dict.txt", "w") as f:
        for w in WORDS + ["yes", "no", "maybe", "which", "region", "does", "text", '"', "describe?", "describe",
                          "can", "image", "and", "text1", "imply", "text2", "?", "square?", "\"?", "object:"]:
            f.write(f"{w} 1\n")
    (folder / "answers.json").write_text('["red", "green", "blue"]')


REFERENCE_WORDS = "10 11 12 13 14 15".split()  # symbols of the 200-entry dictionary of ../shared/ofa_reference


def reference_captions(path, n=10, seed=0):
    """A caption TSV in the words of the reference fixtures' dictionary (for their micro backbones)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            image = Image.new("RGB", (64, 48), "white")
            ImageDraw.Draw(image).rectangle([rng.randrange(30), 10, 40, 30], fill=rng.choice(["red", "blue"]))
            captions = "&&".join(" ".join(rng.sample(REFERENCE_WORDS, 3)) for _ in range(2))
            f.write(f"{i}\t{i}\t{captions}\tx\t{encode(image)}\n")
    return path


# the task settings of the micro checkpoints below: a 64-pixel image, 100 location bins, no image codes, words
MICRO_TASK = {"patch_image_size": 64, "num_bins": 100, "code_dict_size": 0, "text_tokenizer": "word"}


def prompt_checkpoints(folder, files):
    """A micro backbone over the tiny TSVs' words (folder/backbone.pt, with dict.txt) and, for each
    name -> (task, encoder prompt length, decoder prompt length (0: none on that side), task options, seed),
    the checkpoint folder/NAME.pt of the backbone with random prompts (drawn from `seed`, large enough to change
    the outputs) and its prompt file folder/NAME.safetensors."""
    import torch

    from conftest import build_micro, micro_args
    from ofa_prompt.data.dictionary import build_ofa_dictionary
    from ofa_prompt.prompt_file import export_prompts

    write_dict(folder)
    dictionary = build_ofa_dictionary(str(folder / "dict.txt"), 0, 100)
    torch.manual_seed(0)
    backbone = build_micro(dictionary=dictionary).state_dict()
    head = {"args": None, "extra_state": {}, "optimizer_history": []}
    torch.save({**head, "model": backbone, "cfg": {"model": {**vars(micro_args()), "_name": "ofa_prompt_tiny"},
                                                   "task": {"_name": "ofa", **MICRO_TASK}}}, folder / "backbone.pt")
    for name, (task, enc, dec, options, seed) in files.items():
        prompted = {**({"encoder_prompt": True, "encoder_prompt_length": enc} if enc else {}),
                    **({"decoder_prompt": True, "decoder_prompt_length": dec} if dec else {})}
        torch.manual_seed(seed)
        model = build_micro(dictionary=dictionary, **prompted)
        for key, p in model.named_parameters():
            if "_prompt_encoder." in key:
                p.data.normal_(0, 0.3)  # prompts that change the outputs
        state = {**backbone, **{k: v for k, v in model.state_dict().items() if "_prompt_encoder." in k}}
        args = {**vars(micro_args(**prompted)), "_name": "ofa_prompt_tiny"}
        torch.save({**head, "model": state, "cfg": {"model": args, "task": {"_name": task, **MICRO_TASK, **options}}},
                   folder / f"{name}.pt")
        export_prompts(str(folder / f"{name}.pt"), str(folder / f"{name}.safetensors"))
    return folder


def alone(model, request, **generation):
    """What one request of OFAPredictor.mixed() gives served on its own: its prompt file loaded, then the call
    its fields name (a question: answer, a text: ground, else caption)."""
    model.load_prompts(request["prompts"])
    if "question" in request:
        return model.answer(request["image"], request["question"], **generation)
    if "text" in request:
        return model.ground(request["image"], request["text"], **generation)
    return model.caption(request["image"], **generation)
