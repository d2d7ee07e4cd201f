"""--image-feature-cache: the frozen ResNet's features looked up from the second epoch on, with the losses and
the tuned prompts of training without it."""
import copy
import random

import pytest
import torch

import tiny_data
from conftest import build_micro, setup_task
from ofa_prompt.data.image import image_key
from ofa_prompt.models.image_cache import FLOAT16_LOSS_TOLERANCE, ImageFeatureCache, capacity_line
from ofa_prompt.tasks.run_setup import attach_image_cache
from ofa_prompt.tasks.saved_settings import SettingsError


def resnet_and_images(n=6, seed=0):
    model = build_micro().eval()
    g = torch.Generator().manual_seed(seed)
    return model.encoder.embed_images, torch.rand(n, 3, 64, 64, generator=g), torch.arange(2 * n).view(n, 2)


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += len(x)
        return self.inner(x)


@pytest.mark.parametrize("disk", [False, True])
@torch.no_grad()
def test_features_are_computed_once_and_then_looked_up(disk, tmp_path):
    resnet, images, keys = resnet_and_images()
    counting = Counting(resnet)
    cache = ImageFeatureCache(64, str(tmp_path / "f.npy") if disk else None, "float32")
    first = cache.features(counting, images, keys)
    assert torch.equal(first, resnet(images)) and counting.images == 6
    order = [4, 0, 2]
    again = cache.features(counting, images[order], keys[order])
    assert torch.equal(again, first[order]) and counting.images == 6  # all looked up, the very values
    mixed = torch.cat([images[:2], torch.rand(1, 3, 64, 64)])
    out = cache.features(counting, mixed, torch.tensor([[0, 1], [2, 3], [99, 99]]))
    assert counting.images == 7 and torch.equal(out[:2], first[:2])  # only the new image computed
    assert "5 of 12 lookups found" in cache.report() and (tmp_path / "f.npy").exists() == disk
    assert copy.deepcopy(cache) is cache  # an EMA copy of the model shares it


@torch.no_grad()
def test_a_full_cache_computes_the_rest():
    resnet, images, keys = resnet_and_images()
    one = resnet(images[:1])[0]
    cache = ImageFeatureCache(1, storage="float32")
    cache.limit_bytes = 2 * one.numel() * 4  # room for two images
    counting = Counting(resnet)
    cache.features(counting, images, keys)
    cache.features(counting, images, keys)
    assert len(cache.index) == 2 and counting.images == 6 + 4


def train(task, model, epochs, seed=0):
    """Adam on the trainable parameters over `task`'s training rows in batches of 4, each epoch in another
    order; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01)
    ds = task.datasets["train"]
    losses = []
    g = torch.Generator().manual_seed(seed)
    random.seed(seed)  # training captions are drawn among each image's references
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ds), generator=g).tolist()
        for start in range(0, len(order), 4):
            batch = ds.collater([ds[i] for i in order[start:start + 4]])
            logits, _ = model(**batch["net_input"])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(),
                                                     ignore_index=task.dictionary.pad())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def train_with_and_without_the_cache(data, storage):
    runs = {}
    for cached in (False, True):
        task = setup_task("caption", data, *(["--image-feature-cache", "memory", "--image-feature-cache-dtype", storage]
                                             if cached else []))
        torch.manual_seed(0)
        model = build_micro(dictionary=task.dictionary, encoder_prompt=True, decoder_prompt=True,
                            encoder_prompt_length=4, decoder_prompt_length=4, dropout=0.0)
        if cached:
            attach_image_cache(task, model)
            counting = Counting(model.encoder.embed_images)
            model.encoder.embed_images = counting
        runs[cached] = (train(task, model, epochs=3), model)
    return runs, counting


def test_training_with_the_cache_equals_training_without(data):
    runs, counting = train_with_and_without_the_cache(data, "float32")
    (plain, plain_model), (cached, cached_model) = runs[False], runs[True]
    assert max(abs(a - b) for a, b in zip(plain, cached)) < 1e-6
    for (name, a), b in zip(plain_model.named_parameters(), cached_model.parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name
    assert counting.images == 12  # 12 rows, 3 epochs: each image through the ResNet once
    cached_task = setup_task("caption", data, "--image-feature-cache", "memory",
                             "--image-feature-cache-dtype", "float32")
    cached_task.image_cache = cached_model.encoder.image_cache
    sample = cached_task.datasets["train"][0]
    assert not sample["patch_image"].any()  # from the second epoch on, cached rows' images are not decoded


def test_the_cache_is_refused_where_features_change(data):
    task = setup_task("caption", data, "--image-feature-cache", "memory")
    with pytest.raises(SettingsError, match="--tuning-method finetune trains it"):
        attach_image_cache(task, build_micro(dictionary=task.dictionary))
    model = build_micro(dictionary=task.dictionary, encoder_prompt=True)
    attach_image_cache(task, model)
    batch = task.datasets["train"].collater([task.datasets["train"][i] for i in range(2)])
    model.train()
    model.encoder.embed_images.train()  # as if something put the ResNet back into training mode
    with pytest.raises(RuntimeError, match="no longer frozen and in eval mode"):
        model(**batch["net_input"])
    model.eval()
    del batch["net_input"]["image_keys"]
    with pytest.raises(ValueError, match="needs net_input\\['image_keys'\\]"):
        model(**batch["net_input"])


def test_keys_name_the_image_and_its_preprocessing(data):
    rows = tiny_data.rows("caption", 3, seed=0)
    rows[2][4] = rows[0][4]  # the same image in another row
    small = setup_task("caption", data, "--image-feature-cache", "memory")
    large = setup_task("caption", data, "--image-feature-cache", "memory", "--patch-image-size", "96")
    keys = [image_key(r[4], small.image_settings).tolist() for r in rows]
    assert keys[0] == keys[2] != keys[1]
    assert image_key(rows[0][4], large.image_settings).tolist() != keys[0]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_fairseq_train_with_the_cache_saves_the_same_prompts(where, reference, tmp_path):
    """Stock fairseq-train from the official micro checkpoint, 3 epochs of 2 batches of 5: the prompts saved
    with --image-feature-cache are bit-identical to those saved without, and the log shows the lookups."""
    from test_training import prompts, run, train_args

    data = tiny_data.reference_captions(tmp_path / "caption.tsv")
    common = ["--restore-file", str(reference / "plain.pt"), "--reset-optimizer", "--reset-dataloader",
              "--reset-meters", "--batch-size", "5", "--max-epoch", "3"]
    run(train_args(data, reference, tmp_path / "plain", *common))
    log = run(train_args(data, reference, tmp_path / "cached", *common, "--image-feature-cache", where,
                         "--image-feature-cache-dtype", "float32"))
    distinct = len({line.split("\t")[4] for line in data.read_text().splitlines()})
    assert f"image feature cache: {distinct} images" in log
    assert "0 of 10 lookups found" in log and "10 of 10 lookups found" in log  # epoch 1, then epoch 2
    assert (tmp_path / "cached" / "image_features.npy").exists() == (where == "disk")
    assert "room for" in log and "the training data has 10 rows: all of them" in log  # said at start-up
    plain = prompts(tmp_path / "plain" / "checkpoint_last.pt")
    cached = prompts(tmp_path / "cached" / "checkpoint_last.pt")
    assert plain.keys() == cached.keys() and all(torch.equal(plain[k], cached[k]) for k in plain)


def test_float16_features_change_the_loss_by_less_than_the_stated_tolerance(data):
    runs, counting = train_with_and_without_the_cache(data, "float16")
    (plain, _), (cached, _) = runs[False], runs[True]
    first_epoch = len(plain) // 3
    assert plain[:first_epoch] == cached[:first_epoch]  # computed, not looked up: the same
    drift = max(abs(a - b) / abs(a) for a, b in zip(plain, cached))
    assert 0 < drift < FLOAT16_LOSS_TOLERANCE, drift  # later epochs look up float16-rounded features
    assert counting.images == 12


@torch.no_grad()
def test_float16_storage_halves_the_room_and_gives_back_the_resnets_type(tmp_path):
    resnet, images, keys = resnet_and_images()
    cache = ImageFeatureCache(64, str(tmp_path / "f.npy"))
    first = cache.features(resnet, images, keys)
    assert cache.item_bytes == first[0].numel() * 2
    again = cache.features(resnet, images[[1, 0]], keys[[1, 0]])
    assert again.dtype == torch.float32 and torch.equal(again, first[[1, 0]].half().float())
    half = resnet_and_images()[0].to(torch.bfloat16)  # --bf16: kept in float16 on disk too, given back in bfloat16
    cache = ImageFeatureCache(64, str(tmp_path / "bf16.npy"))
    cache.features(half, images.bfloat16(), keys)
    assert cache.features(half, images[:2].bfloat16(), keys[:2]).dtype == torch.bfloat16


@torch.no_grad()
def test_the_disk_cache_is_found_again_by_a_resumed_run_with_the_same_resnet(tmp_path, caplog):
    resnet, images, keys = resnet_and_images()
    path = str(tmp_path / "image_features.npy")
    first = ImageFeatureCache(64, path)
    kept = first.features(resnet, images, keys)
    first.report()  # each epoch's report writes the index
    counting = Counting(resnet)
    resumed = ImageFeatureCache(64, path)
    with caplog.at_level("INFO"):
        out = resumed.features(counting, images[[2, 3]], keys[[2, 3]])
    assert counting.images == 0 and torch.equal(out, kept[[2, 3]].half().float())
    assert "6 images' features found" in caplog.text
    changed = resnet_and_images()[0]
    changed.conv1.weight.add_(0.01)  # another ResNet (e.g. other backbone weights): nothing kept applies
    other = ImageFeatureCache(64, path)
    counting = Counting(changed)
    with caplog.at_level("INFO"):
        other.features(counting, images, keys)
    assert counting.images == 6 and "starting anew" in caplog.text and "another ResNet (weights)" in caplog.text
    wider = ImageFeatureCache(64, path, "float32")
    counting = Counting(changed)
    with caplog.at_level("INFO"):
        wider.features(counting, images, keys)
    assert counting.images == 6 and "another --image-feature-cache-dtype" in caplog.text


def test_the_start_up_line_says_how_many_training_images_fit():
    line = capacity_line(4096, "float16", (1024, 30, 30), 566_747)  # ofa_base at 480 px, COCO's caption rows
    assert "1.76 MB an image: room for 2,330 images in 4096 MB" in line and "at most 0.4% of them" in line
    assert "all of them" in capacity_line(4096, "float32", (1024, 30, 30), 1000)


@pytest.mark.slow
def test_a_resumed_fairseq_train_finds_its_disk_cache(reference, tmp_path):
    from test_training import run, train_args

    data = tiny_data.reference_captions(tmp_path / "caption.tsv")
    cache = ["--image-feature-cache", "disk", "--batch-size", "5"]
    run(train_args(data, reference, tmp_path / "run", "--restore-file", str(reference / "plain.pt"),
                   "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--max-epoch", "1", *cache))
    resumed = run(train_args(data, reference, tmp_path / "run", "--max-epoch", "3", *cache))  # epochs 2 and 3
    assert "images' features found in" in resumed and "starting anew" not in resumed
    assert "10 of 10 lookups found" in resumed and " 0 of 10 lookups" not in resumed  # epoch 2: none computed
