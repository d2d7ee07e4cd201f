"""The record of a TSV file's row check (ofa_prompt.data.row_index): used only for the same file version
and the same check, giving the same rows, counts and warnings as checking again."""
import logging
import os
import shutil

import pytest

import tiny_data
from conftest import make_task
from ofa_prompt.data import row_index
from ofa_prompt.data.tsv import BadRow, TSVReader


class Counting:
    """A row check that counts its calls and refuses rows whose caption is 'bad'."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cols):
        self.calls += 1
        if cols[2] == "bad":
            raise ValueError("a bad caption")


@pytest.fixture
def tsv(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "train.tsv"
    tiny_data.write(path, tiny_data.rows("caption", 8, seed=0))
    return path


def open_reader(path, key="k", skip=False, stats=None):
    check = Counting()
    return TSVReader(str(path), [0, 4, 2], check, skip, key, stats), check


def rows_of(reader):
    return [reader[i] for i in range(len(reader))]


def test_a_second_open_uses_the_record_and_reads_the_same_rows(tsv):
    first, check = open_reader(tsv)
    assert check.calls == 8 and not first.from_index
    assert os.path.isfile(tsv.parent / ".train.tsv.ofa-index.npz")
    second, check = open_reader(tsv)
    assert check.calls == 0 and second.from_index
    assert rows_of(second) == rows_of(first)
    assert (list(second.lines), second.skipped, second.blank) == (list(first.lines), 0, 0)


@pytest.mark.parametrize("change", ["touch", "append", "key", "skip"])
def test_another_file_version_or_check_checks_again(tsv, change):
    open_reader(tsv)
    key, skip = "k", False
    if change == "touch":
        st = os.stat(tsv)
        os.utime(tsv, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "append":
        with open(tsv, "a") as f:
            f.write("\t".join(map(str, tiny_data.rows("caption", 1, seed=5)[0])) + "\n")
    elif change == "key":
        key = "another task option"
    else:
        skip = True
    reader, check = open_reader(tsv, key=key, skip=skip)
    assert check.calls == len(reader) and not reader.from_index
    assert open_reader(tsv, key=key, skip=skip)[1].calls == 0  # and the new record is used next


def test_skipped_rows_and_counts_come_back_from_the_record(tsv, caplog):
    rows = tiny_data.rows("caption", 4, seed=1)
    rows[1][2] = "bad"
    tiny_data.write(tsv, rows)
    with open(tsv, "a") as f:
        f.write("\n")
    with pytest.raises(BadRow, match="line 2: a bad caption"):
        open_reader(tsv)
    stats = {"seen": 3}
    first, _ = open_reader(tsv, skip=True, stats=stats)
    caplog.clear()
    restored = {}
    with caplog.at_level(logging.WARNING):
        second, check = open_reader(tsv, skip=True, stats=restored)
    assert check.calls == 0 and (second.skipped, second.blank) == (1, 1) == (first.skipped, first.blank)
    assert "skipped 1 bad rows and 1 blank lines" in caplog.text
    assert restored == {"seen": 3}
    with pytest.raises(BadRow):  # the record of a skipping check does not excuse a strict one
        open_reader(tsv)


def test_an_unwritable_folder_keeps_the_record_in_the_cache(tsv):
    os.makedirs(tsv.parent / ".train.tsv.ofa-index.npz")  # the place beside the file cannot take a file
    open_reader(tsv)
    cached = [p for p in row_index.record_paths(str(tsv))][1]
    assert cached.startswith(str(tsv.parent / "cache")) and os.path.isfile(cached)
    assert open_reader(tsv)[1].calls == 0


def test_a_damaged_record_is_ignored(tsv, caplog):
    open_reader(tsv)
    (tsv.parent / ".train.tsv.ofa-index.npz").write_bytes(b"not a record")
    with caplog.at_level(logging.WARNING):
        reader, check = open_reader(tsv)
    assert check.calls == 8 and "unreadable row index" in caplog.text


def test_the_task_option_turns_it_off_and_vqa_counts_survive(data, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    rows = tiny_data.rows("vqa_gen", 6, seed=3)
    rows[0][3] = "1.0|!+notananswer"  # outside the answer list: a warning with counts
    tiny_data.write(folder / "vqa_gen_train.tsv", rows)
    for used in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            task = make_task("vqa_gen", folder)
        assert task.datasets["train"].reader.from_index == used
        assert "the most confident answer of 1 of 6 questions" in caplog.text
    assert not make_task("vqa_gen", folder, no_tsv_index=True).datasets["train"].reader.from_index
    assert not make_task("vqa_gen", folder, max_src_length=77).datasets["train"].reader.from_index
