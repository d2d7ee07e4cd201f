"""The data pipeline under fairseq's own machinery: several training files across epochs, distributed
shards and dataloader workers, and rows whose image fails only when fully decoded."""
import base64
import gc
import io
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from PIL import Image

import tiny_data
from conftest import MICRO_CLI, common, run
from ofa_prompt.data.image import image_size_of


@pytest.fixture
def folder(tmp_path):
    tiny_data.write_dict(tmp_path)
    tiny_data.write(tmp_path / "a.tsv", tiny_data.rows("caption", 13, seed=1))
    tiny_data.write(tmp_path / "b.tsv", tiny_data.rows("caption", 6, seed=2))
    tiny_data.write(tmp_path / "valid.tsv", tiny_data.rows("caption", 4, seed=3))
    return tmp_path


def caption_task(folder, data):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, *common("caption", folder), *MICRO_CLI])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def test_epochs_cycle_through_the_training_files(folder):
    t = caption_task(folder, f"{folder}/a.tsv,{folder}/b.tsv,{folder}/valid.tsv")
    assert t.has_sharded_data("train") and not t.has_sharded_data("valid")
    for epoch, name in [(1, "a.tsv"), (2, "b.tsv"), (3, "a.tsv")]:
        t.load_dataset("train", epoch=epoch)
        assert t.datasets["train"].reader.path == f"{folder}/{name}"
    t.load_dataset("valid", epoch=2)
    assert t.datasets["valid"].reader.path == f"{folder}/valid.tsv"


def test_one_training_file_is_loaded_once(folder):
    assert not caption_task(folder, f"{folder}/a.tsv,{folder}/valid.tsv").has_sharded_data("train")
    assert not caption_task(folder, f"{folder}/a.tsv").has_sharded_data("train")


@pytest.mark.slow
def test_fairseq_train_reads_the_second_file_in_epoch_two(folder, tmp_path):
    log = run([f"{sys.prefix}/bin/fairseq-train", f"{folder}/a.tsv,{folder}/b.tsv,{folder}/valid.tsv",
               *common("caption", folder), *MICRO_CLI, "--criterion", "adjust_label_smoothed_cross_entropy",
               "--optimizer", "adam", "--lr", "0.01", "--batch-size", "8", "--max-epoch", "2", "--num-workers", "0",
               "--disable-validation", "--no-save", "--save-dir", str(tmp_path / "ckpt"), "--log-format", "simple"])
    assert f"train: 13 rows from {folder}/a.tsv (epoch 1)" in log
    assert f"train: 6 rows from {folder}/b.tsv (epoch 2)" in log
    assert "end of epoch 2" in log


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shards_and_workers_read_every_row_once_per_epoch(folder, num_workers, monkeypatch):
    # fairseq's epoch iterators sit in a reference cycle: the garbage collector then shuts their persistent
    # workers down out of order, and each worker waits out torch's join timeout (5 s). Shorten it here.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    t = caption_task(folder, f"{folder}/a.tsv,{folder}/valid.tsv")
    t.load_dataset("train")
    dataset = t.datasets["train"]
    # 13 rows in batches of 3 make 5 batches: shard 0 gets 3, shard 1 gets 2 and, to keep distributed
    # workers in step, an empty batch (fairseq pads shards with [], which collates to the dummy {})
    iterators = [t.get_batch_iterator(dataset, max_sentences=3, num_shards=2, shard_id=k, seed=7,
                                      num_workers=num_workers, disable_iterator_cache=True) for k in (0, 1)]
    for _ in range(2):  # each epoch reshuffles the batches, identically on both shards (same seed)
        seen, sizes = Counter(), []
        for it in iterators:
            batches = list(it.next_epoch_itr(shuffle=True))
            sizes.append(len(batches))
            seen.update(uid for batch in batches for uid in batch.get("uniq_ids", []))
        assert sizes == [3, 3] and sum(seen.values()) == 13
        assert set(seen) == {str(i) for i in range(13)} and max(seen.values()) == 1
    del iterators
    gc.collect()  # while the timeout is short


def corrupt_png():
    """A PNG whose chunks are all present but whose compressed pixels are damaged: it passes the
    start-up check (no full decode there) and fails when decoded."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 72, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    start = raw.find(b"IDAT") + 100
    raw[start:start + 40] = bytes(b ^ 0xFF for b in raw[start:start + 40])
    return base64.b64encode(bytes(raw)).decode()


def test_a_row_failing_at_load_time_is_named(folder):
    table = tiny_data.rows("caption", 4)
    table[2][4] = corrupt_png()
    image_size_of(table[2][4])  # the premise: it passes the start-up check
    tiny_data.write(folder / "a.tsv", table)
    t = caption_task(folder, f"{folder}/a.tsv,{folder}/valid.tsv")
    t.load_dataset("train")
    t.datasets["train"][1]
    with pytest.raises(ValueError, match=rf"{folder}/a.tsv, line 3: not a readable image"):
        t.datasets["train"][2]


def test_both_base64_alphabets_read_the_same_image():
    # OFA's readers use urlsafe_b64decode, which reads both alphabets; OFA-format files exist in both
    from ofa_prompt.data.image import BadImage, b64_bytes, decode_image

    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 30, 3), dtype=np.uint8))
    standard, urlsafe = tiny_data.encode(image), tiny_data.encode(image, urlsafe=True)
    assert set("+/") & set(standard) and set("-_") & set(urlsafe)  # the alphabets really differ here
    assert b64_bytes(urlsafe) == b64_bytes(standard)
    assert image_size_of(urlsafe) == image_size_of(standard) == (30, 40)
    assert np.array_equal(np.asarray(decode_image(urlsafe)), np.asarray(image))
    for junk in ["abc$def=", urlsafe[:-4] + "!!!!", "abc"]:
        with pytest.raises(BadImage, match="not base64"):
            b64_bytes(junk)


@pytest.mark.parametrize("imagenet", [False, True])
def test_images_are_preprocessed_as_ofas_torchvision_pipeline(imagenet):
    """OFA's datasets: Resize((size, size), BICUBIC), ToTensor, Normalize with OFA's or ImageNet's statistics."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from ofa_prompt.data.image import IMAGENET_MEAN, IMAGENET_STD, OFA_MEAN, OFA_STD, to_tensor

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (OFA_MEAN, OFA_STD)
    ofa = transforms.Compose([transforms.Resize((24, 24), interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.ToTensor(), transforms.Normalize(mean, std)])
    assert torch.equal(to_tensor(image, 24, imagenet), ofa(image))  # the same operations in the same order


def test_a_cut_target_ends_on_a_character_boundary(caplog):
    # byte-level BPE spreads a Chinese character over several symbols: --max-tgt-length must not split one
    from conftest import BPE
    from ofa_prompt.data.dictionary import build_ofa_dictionary
    from ofa_prompt.data.tokenize import GPT2Tokenizer
    from ofa_prompt.tasks.base import OFATask

    if not (BPE / "encoder.json").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE}")
    task = OFATask.__new__(OFATask)
    task.dictionary = build_ofa_dictionary(str(BPE / "dict.txt"), 0, 0)
    task.tokenizer, task._warned_target_cut = GPT2Tokenizer(str(BPE)), False
    text = "一个红色的圆"
    full = task.encode(text)
    assert task.tokenizer.decode(task.dictionary.string(full)) == text
    cut_texts = set()
    for n in range(1, len(full)):
        cut = task.encode(text, n)
        assert len(cut) <= n
        decoded = task.tokenizer.decode(task.dictionary.string(cut))
        assert "\ufffd" not in decoded and text.startswith(decoded)
        cut_texts.add(decoded)
    assert len(cut_texts) > 2  # whole characters kept, not everything dropped
    assert sum("was cut to --max-tgt-length" in r.message for r in caplog.records) == 1  # once
