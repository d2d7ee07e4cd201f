"""The synthetic benchmark: parseable OFA-format TSVs whose labels agree with the drawn pixels."""
import base64
import filecmp
import io
import re

import pytest
from PIL import Image

from ofa_prompt.synthetic import HELD_OUT, TASKS, generate
from ofa_prompt.synthetic.scene import BACKGROUND, CELLS, COLORS, IMAGE_SIZE

COLUMNS = {"caption": 5, "vqa": 6, "refcoco": 5, "snli_ve": 6}
IMAGE_COLUMN = {"caption": 4, "vqa": 5, "refcoco": 4, "snli_ve": 2}
SCALE = 0.05


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate(str(out), seed=0, scale=SCALE)


def rows(files, name):
    with open(files[name], encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def decode(b64):
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image.convert("RGB")


def colors_in(image, box=None):
    region = image.crop(box) if box else image
    names = {rgb: name for name, rgb in COLORS.items()}
    return {names[rgb] for _, rgb in region.getcolors(IMAGE_SIZE * IMAGE_SIZE) if rgb in names}


def cell_box(position):
    i, half = CELLS.index(position), IMAGE_SIZE // 2
    return ((i % 2) * half, (i // 2) * half, (i % 2 + 1) * half, (i // 2 + 1) * half)


def test_same_seed_same_bytes_other_seed_other_data(data, tmp_path):
    out, files = data
    again = generate(str(tmp_path / "again"), seed=0, scale=SCALE)
    other = generate(str(tmp_path / "other"), seed=1, scale=SCALE)
    for name in files:
        assert filecmp.cmp(files[name], again[name], shallow=False), name
    assert not filecmp.cmp(files["downstream_caption_train.tsv"], other["downstream_caption_train.tsv"], shallow=False)


@pytest.mark.parametrize("stage", ["pretrain", "downstream"])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_rows_parse_and_images_decode(data, stage, split):
    _, files = data
    for task in TASKS:
        table = rows(files, f"{stage}_{task}_{split}.tsv")
        assert table, (stage, task, split)
        ids = [r[0] for r in table]
        assert len(set(ids)) == len(ids)
        for r in table:
            assert len(r) == COLUMNS[task], (task, r[:4])
            image = decode(r[IMAGE_COLUMN[task]])
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            if task == "refcoco":
                x1, y1, x2, y2 = map(int, r[3].split(","))
                assert 0 <= x1 < x2 <= IMAGE_SIZE and 0 <= y1 < y2 <= IMAGE_SIZE
            if task == "vqa":
                for item in r[3].split("&&"):
                    conf, answer = item.split("|!+")
                    assert 0 < float(conf) <= 1 and answer
            if task == "snli_ve":
                assert r[5] in ("entailment", "neutral", "contradiction")


def test_evaluation_rows_hold_several_references(data):
    _, files = data
    for stage in ("pretrain", "downstream"):
        for r in rows(files, f"{stage}_caption_test.tsv"):
            assert len(r[2].split("&&")) >= 3


def test_captions_agree_with_pixels(data):
    _, files = data
    for stage in ("pretrain", "downstream"):
        for r in rows(files, f"{stage}_caption_train.tsv"):
            image = decode(r[4])
            named = re.findall(r"a (\w+) (circle|square|triangle)", r[2])
            assert {c for c, _ in named} == colors_in(image), r[2]
            for color, _shape, position in re.findall(r"a (\w+) (\w+) (?:at|on) the (\w+ \w+)", r[2]):
                assert color in colors_in(image, cell_box(position)), r[2]


def test_referring_boxes_hold_the_named_shape(data):
    _, files = data
    for stage in ("pretrain", "downstream"):
        for r in rows(files, f"{stage}_refcoco_train.tsv"):
            image = decode(r[4])
            x1, y1, x2, y2 = map(int, r[3].split(","))
            centre = image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2))
            assert centre != BACKGROUND
            words = r[2].split()
            color = next((w for w in words if w in COLORS), None)
            if color:  # the colour at the box centre is the one the expression names
                assert centre == COLORS[color], r[2]
            position = re.search(r"at the (\w+ \w+)", r[2])
            if position:
                cx, cy, ex, ey = cell_box(position.group(1))
                assert cx <= x1 and x2 <= ex and cy <= y1 and y2 <= ey, r[2]
            # the box is tight: the shape's colour reaches each edge row/column
            edges = {image.getpixel((x, y1)) for x in range(x1, x2)} | {image.getpixel((x1, y)) for y in range(y1, y2)}
            assert centre in edges


def test_vqa_answers_agree_with_pixels(data):
    _, files = data
    seen = set()
    for stage in ("pretrain", "downstream"):
        for r in rows(files, f"{stage}_vqa_train.tsv"):
            image, question = decode(r[5]), r[2]
            best = r[3].split("&&")[0].split("|!+")
            assert float(best[0]) == 1.0
            answer = best[1]
            if "color" in question:
                seen.add("color")
                assert answer in colors_in(image), (question, answer)
            elif question.startswith("how many"):
                seen.add("count")
                occupied = [p for p in CELLS if colors_in(image, cell_box(p))]
                assert answer == ["one", "two", "three", "four"][len(occupied) - 1], (question, answer)
            elif question.startswith("where is"):
                seen.add("where")
                color = question.split()[3]
                assert color in colors_in(image, cell_box(answer)), (question, answer)
    assert seen == {"color", "count", "where"}


def test_snli_labels_agree_with_pixels(data):
    _, files = data
    for r in rows(files, "pretrain_snli_ve_train.tsv"):
        image, hypothesis, label = decode(r[2]), r[3], r[5]
        match = re.fullmatch(r"there is a (\w+) (\w+)", hypothesis)
        if match and label == "entailment":
            assert match.group(1) in colors_in(image)
        if label == "neutral":
            assert not hypothesis.startswith("there")


def test_held_out_combinations_only_downstream(data):
    _, files = data

    def combos(stage):
        found = set()
        for split in ("train", "valid", "test"):
            for r in rows(files, f"{stage}_caption_{split}.tsv"):
                found |= set(re.findall(r"a (\w+) (circle|square|triangle)", r[2]))
        return found
    assert not set(HELD_OUT) & combos("pretrain")
    assert set(HELD_OUT) <= combos("downstream")


def test_phrasings_differ_between_stages(data):
    _, files = data
    pretrain = {r[2] for r in rows(files, "pretrain_vqa_train.tsv")}
    downstream = {r[2] for r in rows(files, "downstream_vqa_train.tsv")}
    assert not pretrain & downstream


def test_dictionary_covers_every_word(data):
    out, files = data
    with open(files["dict.txt"], encoding="utf-8") as f:
        entries = [line.split() for line in f]
    assert all(len(e) == 2 and e[1].isdigit() for e in entries)
    vocab = {e[0] for e in entries}
    for stage in ("pretrain", "downstream"):
        for r in rows(files, f"{stage}_caption_train.tsv") + rows(files, f"{stage}_refcoco_train.tsv"):
            assert set(r[2].split()) <= vocab, r[2]
        for r in rows(files, f"{stage}_snli_ve_train.tsv"):
            assert set(r[3].split()) | set(r[4].split()) | {r[5]} <= vocab


@pytest.mark.slow
def test_command_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "ofa_prompt.synthetic", "--out", str(out), "--seed", "3",
                             "--scale", "0.01"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "dict.txt").is_file() and (out / "downstream_snli_ve_test.tsv").is_file()
    bad = subprocess.run([sys.executable, "-m", "ofa_prompt.synthetic", "--out", str(out), "--scale", "0"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--scale" in bad.stderr


TASK_FILES = {"caption": "caption", "vqa_gen": "vqa", "refcoco": "refcoco", "snli_ve": "snli_ve"}


@pytest.mark.parametrize("task_name", sorted(TASK_FILES))
def test_task_readers_load_every_row_without_unknown_words(data, task_name):
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    import ofa_prompt

    ofa_prompt.load()  # registers the tasks (conftest did too: said here, where the registry is read)

    out, files = data
    extra = {"ans2label_file": files["vqa_answers.txt"]} if task_name == "vqa_gen" else {}
    for stage in ("pretrain", "downstream"):
        paths = ",".join(files[f"{stage}_{TASK_FILES[task_name]}_{split}.tsv"] for split in ("train", "test"))
        cfg = TASK_DATACLASS_REGISTRY[task_name](data=paths, bpe_dir=str(out), text_tokenizer="word",
                                                 patch_image_size=IMAGE_SIZE, **extra)
        task = TASK_REGISTRY[task_name].setup_task(cfg)
        unk = task.dictionary.unk()
        for split in ("train", "test"):
            task.load_dataset(split)
            dataset = task.datasets[split]
            samples = [dataset[i] for i in range(len(dataset))]
            assert len(samples) == len(rows(files, f"{stage}_{TASK_FILES[task_name]}_{split}.tsv"))
            for s in samples:
                assert unk not in s["source"].tolist() and unk not in s["target"].tolist(), (stage, split, s["uniq_id"])
            batch = dataset.collater(samples[:8])
            assert batch["net_input"]["patch_images"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    if task_name == "vqa_gen":  # every reference answer is a candidate of the answer set
        answers = set(open(files["vqa_answers.txt"]).read().split("\n")) - {""}
        for stage in ("pretrain", "downstream"):
            for r in rows(files, f"{stage}_vqa_test.tsv"):
                assert {a.split("|!+")[1] for a in r[3].split("&&")} <= answers
