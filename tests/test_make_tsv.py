"""python -m ofa_prompt.make_tsv: a user's images and annotations (JSONL, CSV, COCO-style JSON) -> OFA-format
TSVs, read back by the tasks' own readers; bad records are errors naming file and line, or skipped."""
import csv
import json
import logging
import pickle
import shutil
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

import tiny_data
from conftest import BPE, MICRO_CLI, REPO, make_task, run
from ofa_prompt.data.image import b64_bytes, decode_image
from ofa_prompt.make_tsv import LAYOUT, TASKS, MakeTsvError, make_tsv
from ofa_prompt.make_tsv.columns import answers_column, box_column, coco_box, format_number, no_breaks
from ofa_prompt.metrics.vqa import parse_answers
from ofa_prompt.tasks.vqa import read_answer_set

# (file name, size, format): a PNG, a JPEG and an RGBA PNG (OFA's readers convert it to RGB)
IMAGES = [("red.png", (72, 56), "PNG", "red"), ("sub/blue.jpg", (64, 48), "JPEG", "blue"),
          ("green.png", (40, 40), "PNG", "green")]


@pytest.fixture
def images(tmp_path):
    """A folder of three images; -> (folder, {file name: its bytes})."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    raw = {}
    for name, size, fmt, color in IMAGES:
        image = Image.new("RGBA" if name == "green.png" else "RGB", size, "white")
        ImageDraw.Draw(image).rectangle([4, 6, 30, 28], fill=color)
        image.save(folder / name, fmt)
        raw[name] = (folder / name).read_bytes()
    return folder, raw


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_csv(path, records):
    fields = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(records)
    return path


def read_back(task, tsv, tmp_path, **options):
    """Task `task` (tests' word vocabulary) over `tsv` as its training and test file, its training set loaded."""
    folder = tmp_path / "read"
    folder.mkdir(exist_ok=True)
    tiny_data.write_dict(folder)
    for split in ("train", "test"):
        shutil.copy(tsv, folder / f"{task}_{split}.tsv")
    return make_task(task, folder, **options)


def rows_of(task):
    ds = task.datasets["train"]
    return [ds.reader[i] for i in range(len(ds))], [ds[i] for i in range(len(ds))]


def columns(tsv):
    return [line.split("\t") for line in tsv.read_text().splitlines()]


# --- small pure functions ---------------------------------------------------------------------------------
def test_layouts_are_what_the_tasks_read():
    # the task reads its default columns: uniq_id, image, then its texts, in its column_names order
    from fairseq.tasks import TASK_REGISTRY

    read = {"caption": ["uniq_id", "image", "caption"],
            "vqa_gen": ["uniq_id", "image", "question", "answers", "objects"],
            "refcoco": ["uniq_id", "image", "text", "box"],
            "snli_ve": ["uniq_id", "image", "hypothesis", "caption", "label"]}
    for task in TASKS:
        cols = [int(c) for c in TASK_REGISTRY[task].default_cols.split(",")]
        assert [LAYOUT[task][c] for c in cols] == read[task]
    assert [len(LAYOUT[t]) for t in TASKS] == [5, 6, 5, 6]  # OFA's files: 5, 6, 5, 6 columns


def test_field_conversions():
    assert format_number(12.0) == "12" and format_number(12.5) == "12.5" and format_number(7) == "7"
    assert coco_box([10, 20, 30, 5.5]) == [10, 20, 40, 25.5]
    assert box_column([1, 2, 30, 41]) == "1,2,30,41"
    assert box_column([1, 2, 30, 41], (0.5, 0.25)) == "0.5,0.5,15,10.25"
    assert no_breaks("a\tb\nc\r") == "a b c "
    assert answers_column({"red": 1, "blue": 0.3}) == "1.0|!+red&&0.3|!+blue"
    assert parse_answers(answers_column(["red", "red", "blue", "red", "red"])) == {"red": 1.0, "blue": 1 / 3}
    assert answers_column("0.9|!+yes&&0.2|!+no") == "0.9|!+yes&&0.2|!+no"
    assert answers_column(" yes ") == "1.0|!+yes"
    for bad in ({"a&&b": 1.0}, {"x": [1]}, 5, ["a|!+b"]):
        with pytest.raises(ValueError):
            answers_column(bad)


# --- each task: JSONL, CSV, COCO -> TSV -> the task's reader ---------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "coco"])
def test_caption(fmt, images, tmp_path):
    folder, raw = images
    records = [{"image": "red.png", "caption": "a red square", "uniq_id": "r1"},
               {"image": "sub/blue.jpg", "caption": "a blue square", "objects": "square&&box"},
               {"image": "green.png", "caption": "a green\tsquare", "image_id": 77}]
    if fmt == "jsonl":
        records[1]["objects"] = ["square", "box"]  # a list is joined with &&
        ann = write_jsonl(tmp_path / "ann.jsonl", records)
    elif fmt == "csv":
        ann = write_csv(tmp_path / "ann.csv", records)
    else:
        ann = tmp_path / "captions.json"
        ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "red.png"}, {"id": 6, "file_name": "sub/blue.jpg"},
                                              {"id": 77, "file_name": "green.png"}],
                                   "annotations": [{"image_id": 5, "id": "r1", "caption": "a red square"},
                                                   {"image_id": 6, "caption": "a blue square"},
                                                   {"image_id": 77, "caption": "a green\tsquare"}]}))
    out = tmp_path / "caption.tsv"
    summary = make_tsv("caption", str(folder), str(ann), str(out))
    assert (summary.rows, summary.skipped) == (3, 0)
    table = columns(out)
    assert all(len(r) == 5 for r in table)
    ids = ["5", "6", "77"] if fmt == "coco" else ["red", "blue", "77"]
    assert [r[0] for r in table] == ["r1", "1", "2"] and [r[1] for r in table] == ids
    assert [r[3] for r in table] == ["", "" if fmt == "coco" else "square&&box", ""]
    task = read_back("caption", out, tmp_path)
    cols, samples = rows_of(task)
    names = ["red.png", "sub/blue.jpg", "green.png"]
    for (uid, image, caption), sample, name in zip(cols, samples, names):
        assert b64_bytes(image) == raw[name]  # the file's own bytes
        with Image.open(tmp_path / "images" / name) as original:
            assert decode_image(image).size == original.size
    assert [s["ref"] for s in samples] == [["a red square"], ["a blue square"], ["a green square"]]
    assert samples[0]["patch_image"].shape == (3, 64, 64)


def test_caption_join_captions(images, tmp_path):
    folder, _ = images
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "red.png"}, {"id": 6, "file_name": "sub/blue.jpg"}],
                               "annotations": [{"image_id": 5, "id": 1, "caption": "a red square"},
                                               {"image_id": 6, "id": 2, "caption": "a blue square"},
                                               {"image_id": 5, "id": 3, "caption": "red on white"}]}))
    out = tmp_path / "caption_test.tsv"
    assert make_tsv("caption", str(folder), str(ann), str(out), join_captions=True).rows == 2
    table = columns(out)
    assert [r[:3] for r in table] == [["5", "5", "a red square&&red on white"], ["6", "6", "a blue square"]]
    _, samples = rows_of(read_back("caption", out, tmp_path))
    assert samples[0]["ref"] == ["a red square", "red on white"]
    # without it: a row a caption
    assert make_tsv("caption", str(folder), str(ann), str(out)).rows == 3


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_vqa_gen(fmt, images, tmp_path):
    folder, raw = images
    records = [{"image": "red.png", "question": "what color is the square", "answers": "1.0|!+red&&0.3|!+blue",
                "objects": "square"},
               {"image": "red.png", "question": "is it red?", "answers": "yes", "uniq_id": 42},
               {"image": "sub/blue.jpg", "question": "what color?", "answers": "0.6|!+blue"}]
    if fmt == "jsonl":
        records[0]["answers"] = {"red": 1.0, "blue": 0.3}
        records[2]["answers"] = ["blue", "blue", "green"]  # annotators: min(n/3, 1)
        ann = write_jsonl(tmp_path / "ann.jsonl", records)
    else:
        ann = write_csv(tmp_path / "ann.csv", records)
    out, pkl = tmp_path / "vqa.tsv", tmp_path / "trainval_ans2label.pkl"
    summary = make_tsv("vqa_gen", str(folder), str(ann), str(out), ans2label=str(pkl))
    assert (summary.rows, summary.answers) == (3, 4 if fmt == "jsonl" else 3)
    assert all(len(r) == 6 for r in columns(out))
    with open(pkl, "rb") as f:
        ans2label = pickle.load(f)
    # the most frequent first (blue: two rows), ties in the order given
    expected = {"blue": 0, "red": 1, "yes": 2, "green": 3} if fmt == "jsonl" else {"blue": 0, "red": 1, "yes": 2}
    assert ans2label == expected
    assert read_answer_set(str(pkl)) == list(ans2label)  # what --ans2label-file reads
    task = read_back("vqa_gen", out, tmp_path, ans2label_file=str(pkl))
    cols, samples = rows_of(task)
    blue = {"blue": 2 / 3, "green": 1 / 3} if fmt == "jsonl" else {"blue": 0.6}
    assert [s["ref"] for s in samples] == [{"red": 1.0, "blue": 0.3}, {"yes": 1.0}, blue]
    assert [s["uniq_id"] for s in samples] == ["0", "42", "2"]
    assert [c[2] for c in cols] == ["what color is the square", "is it red?", "what color?"]
    assert [c[4] for c in cols] == ["square", "", ""]
    assert b64_bytes(cols[2][1]) == raw["sub/blue.jpg"]
    assert task.answers == list(ans2label)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "coco"])
def test_refcoco(fmt, images, tmp_path):
    folder, raw = images
    boxes = [[4, 6, 30, 28], [4.5, 6.25, 64, 48], [0, 0, 40, 40]]
    records = [{"image": n, "text": f"the {c} square", "box": b} for (n, _, _, c), b in zip(IMAGES, boxes)]
    if fmt == "jsonl":
        ann = write_jsonl(tmp_path / "ann.jsonl", records)
    elif fmt == "csv":
        ann = write_csv(tmp_path / "ann.csv", [{**r, "box": ",".join(map(str, r["box"]))} for r in records])
    else:  # COCO's [x, y, w, h]; RefCOCO's sentences, several to an annotation
        ann = tmp_path / "refs.json"
        ann.write_text(json.dumps({
            "images": [{"id": i, "file_name": n} for i, (n, *_) in enumerate(IMAGES)],
            "annotations": [{"image_id": 0, "id": 10, "bbox": [4, 6, 26, 22],
                             "sentences": [{"sent": "the red square"}]},
                            {"image_id": 1, "id": 11, "bbox": [4.5, 6.25, 59.5, 41.75], "caption": "the blue square"},
                            {"image_id": 2, "id": 12, "bbox": [0, 0, 40, 40],
                             "sentences": ["the green square", "green"]}]}))
    out = tmp_path / "refcoco.tsv"
    assert make_tsv("refcoco", str(folder), str(ann), str(out)).rows == (4 if fmt == "coco" else 3)
    assert all(len(r) == 5 for r in columns(out))
    cols, samples = rows_of(read_back("refcoco", out, tmp_path))
    expected = boxes + ([boxes[2]] if fmt == "coco" else [])
    assert [s["ref"] for s in samples] == expected
    assert [c[3] for c in cols][:2] == ["4,6,30,28", "4.5,6.25,64,48"]
    texts = ["the red square", "the blue square", "the green square"] + (["green"] if fmt == "coco" else [])
    assert [c[2] for c in cols] == texts
    if fmt == "coco":
        assert [c[0] for c in cols] == ["10", "11", "12_0", "12_1"]
    assert [b64_bytes(c[1]) for c in cols][:3] == [raw[n] for n, *_ in IMAGES]


def test_refcoco_max_side_scales_images_and_boxes(images, tmp_path):
    folder, raw = images
    Image.new("RGB", (30, 20), "green").save(folder / "small.png")
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"image": "red.png", "text": "red", "box": [4, 6, 30, 28]},
                                                {"image": "small.png", "text": "green", "box": [0, 0, 30, 20]}])
    out = tmp_path / "refcoco.tsv"
    make_tsv("refcoco", str(folder), str(ann), str(out), max_side=36)
    cols, samples = rows_of(read_back("refcoco", out, tmp_path))
    small = decode_image(cols[0][1])
    assert small.size == (36, 28) and b64_bytes(cols[0][1])[:2] == b"\xff\xd8"  # JPEG
    assert samples[0]["ref"] == [2, 3, 15, 14]  # the box, halved with its image
    assert abs(sum(small.getpixel((8, 8))) - 255) < 40  # still the red square there
    # at most 36 pixels already: its own bytes, its box as given
    assert b64_bytes(cols[1][1]) == (folder / "small.png").read_bytes() and samples[1]["ref"] == [0, 0, 30, 20]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_snli_ve(fmt, images, tmp_path):
    folder, raw = images
    records = [{"image": "red.png", "hypothesis": "a red square", "label": "entailment", "caption": "red on white"},
               {"image": "sub/blue.jpg", "hypothesis": "a red square", "label": "contradiction"},
               {"image": "green.png", "hypothesis": "a square", "label": "neutral", "uniq_id": "g"}]
    ann = (write_jsonl(tmp_path / "ann.jsonl", records) if fmt == "jsonl"
           else write_csv(tmp_path / "ann.csv", records))
    out = tmp_path / "snli.tsv"
    assert make_tsv("snli_ve", str(folder), str(ann), str(out)).rows == 3
    table = columns(out)
    assert all(len(r) == 6 for r in table) and [r[5] for r in table] == ["entailment", "contradiction", "neutral"]
    task = read_back("snli_ve", out, tmp_path, add_caption=True)
    cols, samples = rows_of(task)
    assert [s["ref"] for s in samples] == ["yes", "no", "maybe"]
    assert [c[3] for c in cols] == ["red on white", "", ""] and [c[0] for c in cols] == ["0", "1", "g"]
    assert b64_bytes(cols[1][1]) == raw["sub/blue.jpg"]


# --- bad records --------------------------------------------------------------------------------------------
GOOD = {"caption": {"image": "red.png", "caption": "a red square"},
        "vqa_gen": {"image": "red.png", "question": "what color?", "answers": {"red": 1.0}},
        "refcoco": {"image": "red.png", "text": "the red square", "box": [4, 6, 30, 28]},
        "snli_ve": {"image": "red.png", "hypothesis": "a red square", "label": "entailment"}}
BAD = [  # (task, the bad record (a text: a raw JSONL line), what the error says)
    ("caption", {"image": "missing.png", "caption": "x"}, "image file not found: "),
    ("refcoco", {"image": "red.png", "text": "red", "box": [4, 6, 80, 28]}, "reaches outside the 72x56 image"),
    ("vqa_gen", {"image": "red.png", "question": "what?", "answers": {"red": 5}}, "is not between 0 and 1"),
    ("caption", {"image": "red.png", "caption": " "}, "empty caption"),
    ("snli_ve", {"image": "red.png", "hypothesis": "a square", "label": "yes"}, "label 'yes' is not one of"),
    ("refcoco", '{"image": "red.png", "text": "red", ', "not a JSON object"),
    ("vqa_gen", {"image": "red.png", "answers": {"red": 1.0}}, "no field 'question'"),
    ("snli_ve", {"image": "notes.txt", "hypothesis": "a square", "label": "neutral"}, "not a readable image"),
]


@pytest.mark.parametrize("task,record,message", BAD, ids=[f"{t}-{m[:16]}" for t, _, m in BAD])
def test_bad_record_names_file_and_line(task, record, message, images, tmp_path):
    folder, _ = images
    (folder / "notes.txt").write_text("not an image")
    ann = tmp_path / "ann.jsonl"
    lines = [json.dumps(GOOD[task]), record if isinstance(record, str) else json.dumps(record), json.dumps(GOOD[task])]
    ann.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.tsv"
    out.write_text("an earlier file\n")
    with pytest.raises(MakeTsvError) as e:
        make_tsv(task, str(folder), str(ann), str(out))
    assert str(e.value).startswith(f"{ann}, line 2: ") and message in str(e.value) and "--skip-bad-rows" in str(e.value)
    assert out.read_text() == "an earlier file\n"  # written whole or not at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.jsonl", "images", "out.tsv"]  # no temporary left
    summary = make_tsv(task, str(folder), str(ann), str(out), skip_bad_rows=True)
    assert (summary.rows, summary.skipped) == (2, 1)
    assert len(read_back(task, out, tmp_path).datasets["train"]) == 2


def test_bad_csv_and_coco_records(images, tmp_path):
    folder, _ = images
    ann = write_csv(tmp_path / "ann.csv", [{**GOOD["refcoco"], "box": "4,6,30,28"},
                                           {**GOOD["refcoco"], "box": "4,6,4,28"}])
    with pytest.raises(MakeTsvError, match=r"ann\.csv, line 3: region 4,6,4,28: the box has no width"):
        make_tsv("refcoco", str(folder), str(ann), str(tmp_path / "out.tsv"))
    coco = tmp_path / "refs.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "red.png"}],
                                "annotations": [{"image_id": 1, "bbox": [4, 6, 20, 20], "caption": "red"},
                                                {"image_id": 2, "bbox": [4, 6, 20, 20], "caption": "red"},
                                                {"image_id": 1, "bbox": [4, 6, 20], "caption": "red"}]}))
    with pytest.raises(MakeTsvError, match=r"refs\.json, annotations\[1\]: image_id 2 is not the id"):
        make_tsv("refcoco", str(folder), str(coco), str(tmp_path / "out.tsv"))
    summary = make_tsv("refcoco", str(folder), str(coco), str(tmp_path / "out.tsv"), skip_bad_rows=True)
    assert (summary.rows, summary.skipped) == (1, 2)
    (tmp_path / "short.csv").write_text("image,text\nred.png,red\n")
    with pytest.raises(MakeTsvError, match=r"short\.csv: the header row image,text lacks the field\(s\) box"):
        make_tsv("refcoco", str(folder), str(tmp_path / "short.csv"), str(tmp_path / "out.tsv"))


def test_duplicate_ids_and_options(images, tmp_path):
    folder, _ = images
    ann = write_jsonl(tmp_path / "ann.jsonl", [{**GOOD["caption"], "uniq_id": 1}, {**GOOD["caption"], "uniq_id": "1"}])
    with pytest.raises(MakeTsvError, match=r"line 2: uniq_id '1' is already the id of the row from .*line 1"):
        make_tsv("caption", str(folder), str(ann), str(tmp_path / "out.tsv"))
    for kwargs, message in [({"ans2label": "a.pkl"}, "--ans2label writes vqa_gen"),
                            ({"join_captions": True, "task": "refcoco"}, "--join-captions"),
                            ({"max_side": 0}, "--max-side 0"), ({"fmt": "coco"}, "COCO-style JSON is read for")]:
        task = kwargs.pop("task", "snli_ve" if "fmt" in kwargs else "caption")
        with pytest.raises(MakeTsvError, match=message):
            make_tsv(task, str(folder), str(ann), str(tmp_path / "out.tsv"), **kwargs)
    with pytest.raises(MakeTsvError, match="--images .*: not a folder"):
        make_tsv("caption", str(tmp_path / "nowhere"), str(ann), str(tmp_path / "out.tsv"))
    (tmp_path / "ann.txt").write_text(json.dumps(GOOD["caption"]) + "\n")
    with pytest.raises(MakeTsvError, match="cannot tell the format"):
        make_tsv("caption", str(folder), str(tmp_path / "ann.txt"), str(tmp_path / "out.tsv"))
    assert make_tsv("caption", str(folder), str(tmp_path / "ann.txt"), str(tmp_path / "out.tsv"), fmt="jsonl").rows == 1


def test_progress_is_logged_every_n_rows(images, tmp_path, caplog):
    folder, _ = images
    ann = write_jsonl(tmp_path / "ann.jsonl", [GOOD["caption"]] * 5)
    with caplog.at_level(logging.INFO, logger="ofa_prompt.make_tsv"):
        make_tsv("caption", str(folder), str(ann), str(tmp_path / "out.tsv"), log_every=2)
    progress = [r.getMessage() for r in caplog.records if "rows written" in r.getMessage()]
    assert [m.split(" rows")[0] for m in progress] == ["2", "4"]


@pytest.mark.slow
def test_cli(images, tmp_path):
    folder, raw = images
    ann = write_csv(tmp_path / "ann.csv", [{"image": n, "hypothesis": f"a {c} square", "label": "entailment"}
                                           for n, _, _, c in IMAGES])
    out = tmp_path / "snli.tsv"
    cmd = [sys.executable, "-m", "ofa_prompt.make_tsv", "snli_ve", "--images", str(folder), "--annotations", str(ann),
           "--out", str(out), "--log-every", "2"]
    log = run(cmd, cwd=REPO)
    assert f"wrote 3 rows to {out}" in log and "2 rows written" in log
    assert [b64_bytes(r[2]) for r in columns(out)] == [raw[n] for n, *_ in IMAGES]
    (folder / "red.png").unlink()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"error: {ann}, line 2: image file not found: {folder / 'red.png'}" in p.stderr
    help_text = run([sys.executable, "-m", "ofa_prompt.make_tsv", "--help"], cwd=REPO)
    assert "hypothesis" in help_text and "conf|!+answer" in help_text and "--skip-bad-rows" in help_text


# --- end to end: make_tsv -> fairseq-train -> fairseq-generate -------------------------------------------
@pytest.mark.slow
def test_caption_tsv_trains_and_generates(images, tmp_path):
    if not (BPE / "encoder.json").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE}")
    folder, _ = images
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"image": n, "caption": [f"a {c} square", f"{c} on white"]}
                                               for n, _, _, c in IMAGES])
    tsv = tmp_path / "caption.tsv"
    make_tsv("caption", str(folder), str(ann), str(tsv))
    bin_dir = f"{sys.prefix}/bin"
    task = ["--user-dir", str(REPO / "ofa_prompt"), "--task", "caption", "--bpe-dir", str(BPE),
            "--patch-image-size", "64", "--max-image-size", "64", "--num-bins", "100"]
    save = tmp_path / "ckpt"
    log = run([f"{bin_dir}/fairseq-train", f"{tsv},{tsv}", *task, *MICRO_CLI, "--encoder-prompt",
               "--encoder-prompt-length", "4", "--criterion", "adjust_label_smoothed_cross_entropy",
               "--optimizer", "adam", "--lr", "0.03", "--batch-size", "2", "--max-update", "2", "--save-dir", str(save),
               "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
               "--disable-validation"])
    assert "num_updates=2" in log, log[-2000:]
    out = run([f"{bin_dir}/fairseq-generate", str(tsv), *task, "--path", str(save / "checkpoint_last.pt"),
               "--gen-subset", "test", "--beam", "2", "--max-len-b", "5", "--batch-size", "2"])
    hypotheses = [line for line in out.splitlines() if line.startswith("H-")]
    assert sorted(int(h.split("\t")[0][2:]) for h in hypotheses) == [0, 1, 2], out[-2000:]
