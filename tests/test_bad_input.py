"""Hostile and malformed input: a clear error naming file and line (or option), or a counted skip."""
import base64

import numpy as np
import pytest
from PIL import Image

import tiny_data
from conftest import setup_task as setup
from ofa_prompt.data.image import BadImage, decode_image
from ofa_prompt.data.tsv import BadRow


@pytest.fixture
def folder(tmp_path):
    tiny_data.write_dict(tmp_path)
    return tmp_path


def write_with(folder, task, bad_row, line=3):
    table = tiny_data.rows(task, 5)
    table.insert(line - 1, bad_row)
    tiny_data.write(folder / f"{task}_train.tsv", table)
    tiny_data.write(folder / f"{task}_test.tsv", tiny_data.rows(task, 2))


def good(task):
    return list(tiny_data.rows(task, 1, seed=9)[0])


def truncated(fmt, keep=0.8):
    """A noisy image (so its body is most of the file) cut to `keep` of its bytes, as base64."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 72, 3), dtype=np.uint8))
    raw = base64.b64decode(tiny_data.encode(noise, fmt))
    return base64.b64encode(raw[:int(len(raw) * keep)]).decode()


def with_col(task, col, value):
    row = good(task)
    row[col] = value
    return row


CASES = [
    ("caption", good("caption")[:4], "line 3: 4 columns, expected 5 or more"),
    ("caption", with_col("caption", 4, truncated("JPEG")), "line 3: truncated or corrupt image: JPEG"),
    ("caption", with_col("caption", 4, truncated("PNG")), "line 3: truncated or corrupt image: PNG"),
    ("caption", with_col("caption", 4, truncated("GIF")), "line 3: truncated or corrupt image: GIF"),
    ("caption", [""] * 5, "line 3: not a readable image"),  # tabs only: empty columns, not a blank line
    ("caption", with_col("caption", 4, "not base64 at all!"), "line 3: not base64"),
    ("caption", with_col("caption", 4, base64.b64encode(b"\x89PNG garbage").decode()), "line 3: not a readable image"),
    ("caption", with_col("caption", 2, " && "), "line 3: empty caption"),
    ("vqa_gen", with_col("vqa_gen", 2, "   "), "line 3: empty question"),
    ("vqa_gen", with_col("vqa_gen", 3, "red"), "not of the form 'confidence|!+answer'"),
    ("refcoco", with_col("refcoco", 3, "10,10,500,20"),
     "line 3: region 10,10,500,20: the box reaches outside the 72x56 image"),
    ("refcoco", with_col("refcoco", 3, "30,10,5,20"), "the corners are swapped (expected x1 < x2 and y1 < y2)"),
    ("refcoco", with_col("refcoco", 3, "-3,1,5,20"), "the box reaches outside the 72x56 image"),
    ("refcoco", with_col("refcoco", 3, "10,20,10,40"), "region 10,20,10,40: the box has no width (x1 = x2"),
    ("refcoco", with_col("refcoco", 3, "10,20,30,20"), "the box has no height (x1 != x2, y1 = y2)"),
    ("snli_ve", with_col("snli_ve", 5, "maybe"), "label 'maybe' is not one of"),
    ("vqa_gen", with_col("vqa_gen", 3, "5.0|!+red"), "line 3: confidence '5.0' of answer 'red' is not between 0 and 1"),
    ("vqa_gen", with_col("vqa_gen", 3, "-1.0|!+red"), "confidence '-1.0' of answer 'red' is not between 0 and 1"),
    ("vqa_gen", with_col("vqa_gen", 3, "nan|!+red"), "confidence 'nan' of answer 'red' is not between 0 and 1"),
    ("vqa_gen", with_col("vqa_gen", 3, "1.0|!+red&&0.3|!+red"), "answer 'red' is given twice (confidences 1 and 0.3)"),
]


@pytest.mark.parametrize("task, row, words", CASES)
def test_bad_rows_are_named_at_load_time(folder, task, row, words):
    write_with(folder, task, row)
    with pytest.raises(BadRow) as e:
        setup(task, folder)
    assert f"{task}_train.tsv" in str(e.value) and words in str(e.value)


def skipping_reader(folder, table):
    """The training reader of the caption task run with --skip-bad-rows over `table`."""
    tiny_data.write(folder / "caption_train.tsv", table)
    tiny_data.write(folder / "caption_test.tsv", tiny_data.rows("caption", 2))
    t = setup("caption", folder, "--skip-bad-rows")
    return t.datasets["train"].reader


def test_skip_bad_rows_counts_them(folder):
    table = tiny_data.rows("caption", 5)
    table[1] = table[1][:3]
    table[3][4] = "%%%"
    reader = skipping_reader(folder, table)
    assert len(reader) == 3 and reader.skipped == 2
    assert [reader.lines[i] for i in range(3)] == [1, 3, 5]


def test_truncated_images_are_skipped_and_counted(folder):
    table = tiny_data.rows("caption", 5)
    table[0][4], table[2][4] = truncated("JPEG"), truncated("PNG", keep=0.99)
    reader = skipping_reader(folder, table)
    assert reader.skipped == 2 and list(reader.lines) == [2, 4, 5]


def test_a_bad_first_row_fails_alone(folder):
    table = tiny_data.rows("caption", 5)
    table[0] = table[0][:2]
    table[1] = table[1] + ["an unread extra column"]
    reader = skipping_reader(folder, table)
    assert reader.skipped == 1 and list(reader.lines) == [2, 3, 4, 5]


def cut_character(path, line):
    """Line `line` of `path` with a two-byte character cut after its first byte, as a truncated copy has."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"square", "squä".encode()[:-1] + b"re", 1)
    path.write_bytes(b"\n".join(lines))


def test_text_cut_inside_a_character_is_a_row_error(folder):
    from ofa_prompt.data.tsv import TSVReader

    write_with(folder, "caption", good("caption"))
    cut_character(folder / "caption_train.tsv", 3)
    with pytest.raises(BadRow, match=r"caption_train.tsv, line 3: not UTF-8 text"):
        setup("caption", folder)
    reader = TSVReader(str(folder / "caption_train.tsv"), [0, 4, 2], skip_bad_rows=True)
    assert reader.skipped == 1 and list(reader.lines) == [1, 2, 4, 5, 6]


def test_a_tsv_replaced_or_changed_during_a_run(folder):
    """Rows come from the file that was checked: a version renamed over it is not read (a spawned worker,
    which must open it again, refuses it); a change in place is an error naming the file."""
    import os
    import pickle

    from ofa_prompt.data.tsv import TSVReader
    from ofa_prompt.file_version import FileChangedError

    path = folder / "t.tsv"
    tiny_data.write(path, tiny_data.rows("caption", 3))
    reader = TSVReader(str(path), [0, 4, 2])
    checked = [reader[i] for i in range(3)]
    spawned = pickle.dumps(reader)  # what a spawned dataloader worker receives
    tiny_data.write(folder / "new.tsv", tiny_data.rows("caption", 4, seed=5))
    os.replace(folder / "new.tsv", path)
    assert [reader[i] for i in range(3)] == checked
    with pytest.raises(FileChangedError, match="t.tsv changed on disk after it was checked .*another file now has"):
        pickle.loads(spawned)[0]
    reader = TSVReader(str(path), [0, 4, 2])
    with open(path, "ab") as f:
        f.write(b"appended\tin\tplace\n")
    with pytest.raises(FileChangedError, match=r"t.tsv changed on disk .*\(\d+ bytes then, \d+ now\)"):
        reader[0]


def test_blank_lines_are_passed_over_and_counted(folder, caplog):
    from ofa_prompt.data.tsv import TSVReader

    path = folder / "t.tsv"
    tiny_data.write(path, tiny_data.rows("caption", 3))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", lines[1], "   \r", lines[2], ""]) + "\n")
    reader = TSVReader(str(path), [0, 4, 2])
    assert list(reader.lines) == [1, 3, 5] and reader.blank == 3 and reader.skipped == 0
    assert "skipped 0 bad rows and 3 blank lines" in caplog.text


def test_missing_bpe_files_name_the_option(tmp_path):
    from ofa_prompt.data.tokenize import build_tokenizer

    with pytest.raises(FileNotFoundError, match="--bpe-dir .*encoder.json"):
        build_tokenizer("gpt2", str(tmp_path))
    from ofa_prompt.data.dictionary import build_ofa_dictionary

    with pytest.raises(FileNotFoundError, match="dict.txt"):
        build_ofa_dictionary(str(tmp_path / "dict.txt"))


def b64(image, fmt="PNG"):
    return tiny_data.encode(image, fmt)


@pytest.mark.parametrize("image, fmt", [
    (Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG"),
    (Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), "PNG"),
    (Image.new("P", (8, 8), 3), "PNG"),
    (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"),
    (Image.new("LA", (8, 8), (10, 255)), "PNG"),
])
def test_unusual_image_modes_become_rgb(image, fmt):
    out = decode_image(b64(image, fmt))
    assert out.mode == "RGB" and out.size == (8, 8)


def test_transparent_pixels_become_white_and_16bit_is_scaled():
    assert decode_image(b64(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))).getpixel((0, 0)) == (255, 255, 255)
    grey = decode_image(b64(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))))
    assert grey.getpixel((0, 0)) == (255, 255, 255)


def test_decompression_bomb_and_random_bytes_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_image(b64(Image.new("RGB", (100, 100))))
    rng = np.random.default_rng(0)
    with pytest.raises(BadImage, match="not a readable image"):
        decode_image(base64.b64encode(rng.bytes(500)).decode())


def test_truncated_image_is_refused():
    raw = base64.b64decode(b64(Image.new("RGB", (64, 64), "red"), "JPEG"))
    with pytest.raises(BadImage):
        decode_image(base64.b64encode(raw[: len(raw) // 3]).decode())


def test_unicode_text_loads(folder):
    write_with(folder, "caption", with_col("caption", 2, "ünïcödé ✓ square&&日本語"))
    t = setup("caption", folder)
    sample = t.datasets["train"][2]  # the unicode row: words outside the dictionary become <unk>
    assert sample["target"].eq(t.dictionary.unk()).any()


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_id(folder):
    tiny_data.write(folder / "caption_train.tsv", tiny_data.rows("caption", 3))
    (folder / "caption_train.tsv").write_bytes(b"\xef\xbb\xbf" + (folder / "caption_train.tsv").read_bytes())
    tiny_data.write(folder / "caption_test.tsv", tiny_data.rows("caption", 2))
    t = setup("caption", folder)
    ds = t.datasets["train"]
    assert [ds[i]["uniq_id"] for i in range(3)] == ["0", "1", "2"]


def test_a_folder_or_a_gzip_file_as_data_says_what_it_is(folder):
    import gzip

    tiny_data.write(folder / "caption_test.tsv", tiny_data.rows("caption", 2))
    (folder / "caption_train.tsv").mkdir()
    with pytest.raises(IsADirectoryError, match="caption_train.tsv is a folder: --data names TSV files"):
        setup("caption", folder)
    (folder / "caption_train.tsv").rmdir()
    (folder / "caption_train.tsv").write_bytes(gzip.compress((folder / "caption_test.tsv").read_bytes()))
    with pytest.raises(ValueError, match="caption_train.tsv is gzip-compressed: decompress it first"):
        setup("caption", folder)
