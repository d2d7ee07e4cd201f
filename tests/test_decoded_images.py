"""--decoded-image-cache: a training row's image decoded once, its later readings the same tensors to the bit,
shared with forked dataloader workers, and training with it equal to training without."""
import random

import pytest
import torch

import ofa_prompt.data.image as image_module
import tiny_data
from conftest import build_micro, setup_task
from ofa_prompt.data.decoded_images import DecodedImage, DecodedImageStore
from test_image_cache import train


class Decodes:
    """Counts (or forbids) image decodings: those kept (decoded_resized) and those not (load_image)."""

    def __init__(self, monkeypatch, forbid=False):
        self.count, inner = 0, image_module.decode_image

        def counting(b64):
            if forbid:
                raise AssertionError("decoded again")
            self.count += 1
            return inner(b64)

        monkeypatch.setattr(image_module, "decode_image", counting)


def read_all(ds, workers=0):
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collater, num_workers=workers)
    return [b for b in loader]


@pytest.mark.parametrize("task_name", ["caption", "refcoco"])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_rows_are_decoded_once_and_read_back_to_the_bit(task_name, where, data, monkeypatch, tmp_path):
    plain = setup_task(task_name, data).datasets["train"]
    ds = setup_task(task_name, data, "--decoded-image-cache", where, "--save-dir", str(tmp_path)).datasets["train"]
    decodes = Decodes(monkeypatch)
    first = [ds[i] for i in range(len(ds))]
    assert decodes.count == len(ds) and ds.decoded.kept() == len(ds)
    assert (tmp_path / "decoded_images.npy").exists() == (where == "disk")
    references = []
    for i in range(len(ds)):
        random.seed(i)  # a caption's training target is drawn among its references
        references.append(plain[i])
    Decodes(monkeypatch, forbid=True)
    for i, reference in enumerate(references):
        random.seed(i)
        again = ds[i]
        assert torch.equal(again["patch_image"], reference["patch_image"])
        assert torch.equal(again["patch_image"], first[i]["patch_image"])
        for key in ("source", "target", "prev_output_tokens"):  # refcoco: the box tokens need the original size
            assert torch.equal(again[key], reference[key]), key


def test_forked_workers_share_what_they_decode(data, monkeypatch):
    ds = setup_task("caption", data, "--decoded-image-cache", "memory").datasets["train"]
    read_all(ds, workers=2)  # every row decoded in one of two forked workers ...
    assert ds.decoded.kept() == len(ds)  # ... and seen here
    Decodes(monkeypatch, forbid=True)  # workers forked from now on inherit the patch
    batches = read_all(ds, workers=2)
    assert sum(b["nsentences"] for b in batches) == len(ds)


def test_rows_beyond_the_limit_are_decoded_every_time(data, monkeypatch):
    task = setup_task("caption", data, "--decoded-image-cache", "memory", "--decoded-image-cache-mb", "1",
                      "--patch-image-size", "256")
    ds = task.datasets["train"]
    assert ds.decoded.capacity == 2 ** 20 // (256 * 256 * 3) == 5 < len(ds)
    decodes = Decodes(monkeypatch)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert decodes.count == 2 * len(ds) - 5


def test_the_store_keeps_one_image_size(tmp_path):
    store = DecodedImageStore(rows=3, size=4, limit_mb=1)
    store.put(0, DecodedImage(torch.zeros(4, 4, 3, dtype=torch.uint8).numpy(), 7, 9))
    assert store.get(0).width == 7 and store.get(1) is None and store.kept() == 1
    with pytest.raises(ValueError, match="an image of \\[5, 5, 3\\]"):
        store.put(1, DecodedImage(torch.zeros(5, 5, 3, dtype=torch.uint8).numpy(), 5, 5))
    with pytest.raises(ValueError, match="--decoded-image-cache-mb=0"):
        DecodedImageStore(rows=3, size=4, limit_mb=0)


def test_training_with_the_cache_equals_training_without(data, monkeypatch):
    """Finetuning, which --image-feature-cache refuses: 3 epochs give the same losses and weights to the bit."""
    runs = {}
    for cached in (False, True):
        task = setup_task("caption", data, *(["--decoded-image-cache", "memory"] if cached else []))
        decodes = Decodes(monkeypatch)
        torch.manual_seed(0)
        model = build_micro(dictionary=task.dictionary, dropout=0.0)
        runs[cached] = (train(task, model, epochs=3), model, decodes.count)
    (plain, plain_model, plain_decodes), (cached, cached_model, cached_decodes) = runs[False], runs[True]
    assert plain == cached
    assert all(torch.equal(a, b) for a, b in zip(plain_model.parameters(), cached_model.parameters()))
    rows = len(task.datasets["train"])
    assert plain_decodes == 3 * rows and cached_decodes == rows


@pytest.mark.slow
def test_fairseq_train_with_the_cache_saves_the_same_weights(reference, tmp_path):
    """Stock fairseq-train, two forked dataloader workers, 3 epochs of 2 batches of 5: the rows the workers
    decode in epoch 1 are kept for epoch 2, and the saved prompts are bit-identical to those saved without."""
    from test_training import prompts, run, train_args

    data = tiny_data.reference_captions(tmp_path / "caption.tsv")
    common = ["--restore-file", str(reference / "plain.pt"), "--reset-optimizer", "--reset-dataloader",
              "--reset-meters", "--batch-size", "5", "--max-epoch", "3", "--num-workers", "2"]
    run(train_args(data, reference, tmp_path / "plain", *common))
    log = run(train_args(data, reference, tmp_path / "cached", *common, "--decoded-image-cache", "disk"))
    assert "decoded image cache: room for 10 of 10 training rows" in log
    assert log.count(f"decoded image cache: 10 of 10 rows of {data} kept") == 2  # epochs 2 and 3
    assert (tmp_path / "cached" / "decoded_images.npy").exists()
    plain = prompts(tmp_path / "plain" / "checkpoint_last.pt")
    cached = prompts(tmp_path / "cached" / "checkpoint_last.pt")
    assert plain.keys() == cached.keys() and all(torch.equal(plain[k], cached[k]) for k in plain)
