"""A cache of the frozen ResNet's image features (`--image-feature-cache`).

Under prompt tuning, adapters or BitFit the ResNet is frozen and in eval mode, and OFA's preprocessing of
caption, VQA, SNLI-VE and RefCOCO images has no random augmentation: an image's features are the same in
every epoch. From the second epoch on they are looked up instead of computed, and the dataset does not
decode those images at all (OFADataset: a cached row's image becomes a CachedImage placeholder of its size).

Features are keyed by a digest of the row's image bytes and the preprocessing settings (the dataset's
`image_key`), and kept in memory or in a memory-mapped file (under --save-dir), up to a size limit; once
full, further images are computed as usual. They are stored in float16 by default (half the room of
float32; the step's loss moves by less than FLOAT16_LOSS_TOLERANCE, tests/test_image_cache.py) or in float32,
which keeps a cached step equal to an uncached one to the bit (where the ResNet's result for an image does
not depend on the batch around it, true for equal batch sizes on the CPUs measured).

The disk cache outlives its run: beside the features, an index (FILE.index.npz, written atomically after the
features it names) records the format, shape, storage type and a digest of the ResNet's weights; a resumed
or restarted run with the same ResNet and settings finds its features again, any other starts anew (and says why).
"""
import atexit
import hashlib
import logging
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..atomic_file import atomic_path
from ..errors import InputError

logger = logging.getLogger(__name__)

FORMAT = 2  # of the disk cache's index; another number starts anew
STORAGE = {"float16": torch.float16, "float32": torch.float32}
FLOAT16_LOSS_TOLERANCE = 1e-3  # relative change of a step's loss with float16-stored features (measured: tests)


class ImageCacheError(InputError, ValueError):
    """A setting of --image-feature-cache that cannot be used."""


def resnet_digest(resnet: torch.nn.Module) -> str:
    """A digest of the ResNet's weights and buffers: features kept for one ResNet are not another's."""
    h = hashlib.blake2b(digest_size=16)
    for tensor in resnet.state_dict().values():  # not their names: a wrapper (DDP's module.) changes nothing
        h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def capacity_line(limit_mb: int, storage: str, feature_shape, rows: Optional[int]) -> str:
    """The start-up line: how many images the limit holds, against the training file's rows."""
    item = int(np.prod(feature_shape)) * torch.empty((), dtype=STORAGE[storage]).element_size()
    room = limit_mb * 2 ** 20 // item
    line = (f"image feature cache: {storage} features of {list(feature_shape)}, {item / 2 ** 20:.2f} MB an image: "
            f"room for {room:,} images in {limit_mb} MB")
    if rows is not None:
        held = "all of them" if room >= rows else f"at most {room / rows:.1%} of them (more if rows share images)"
        line += f"; the training data has {rows:,} rows: {held}"
    return line


class ImageFeatureCache:
    def __init__(self, limit_mb: int, path: Optional[str] = None, storage: str = "float16"):
        """limit_mb: the most the features may take; path: a file for the memory map (None: in memory);
        storage: the type the features are kept in (float16 or float32)."""
        if limit_mb < 1:
            raise ImageCacheError(f"--image-feature-cache-mb={limit_mb}: give at least 1 MB")
        if storage not in STORAGE:
            raise ImageCacheError(f"--image-feature-cache-dtype={storage}: one of {', '.join(STORAGE)}")
        self.limit_bytes, self.path, self.storage = limit_mb * 2 ** 20, path, STORAGE[storage]
        self.index: Dict[bytes, int] = {}  # key -> slot
        self.slots: List[Tensor] = []  # in memory: one tensor per slot
        self.store: Optional[np.memmap] = None  # on disk: [slots, *shape]
        self.shape = None
        self.out_dtype: Optional[torch.dtype] = None  # what the ResNet gives: looked-up features come back in it
        self.item_bytes = 0  # the features of one image, as stored
        self.hits = self.misses = 0
        self.resnet_seconds = 0.0  # spent computing the features of the images not found, since the last report
        self._reported_at = time.perf_counter()
        self._full_said = False
        self._opened = path is None
        self._indexed = 0  # entries the index file on disk names

    def __deepcopy__(self, memo):  # an EMA copy of the model shares the cache: its ResNet is the same frozen one
        return self

    def __getstate__(self):
        # what travels to a spawned dataloader worker (with the task): which images are cached, not their features
        return {**self.__dict__, "slots": [], "store": None}

    def __contains__(self, key: Tensor) -> bool:
        """Whether the features of the image with `key` ([2] int64, the dataset's image_key) are kept."""
        return key.numpy().astype(np.int64).tobytes() in self.index

    @property
    def capacity(self) -> int:
        """How many images fit in the limit (known once the first features are seen)."""
        return self.limit_bytes // self.item_bytes

    @property
    def size_bytes(self) -> int:
        return len(self.index) * self.item_bytes

    def features(self, resnet, images: Tensor, keys: Tensor) -> Tensor:
        """resnet(images), with the features of images seen before (keys [B, 2] int64) looked up."""
        if not self._opened:
            self._open(resnet)
        names = [k.tobytes() for k in keys.cpu().numpy().astype(np.int64)]
        found = [self._get(name) for name in names]
        missing = [i for i, f in enumerate(found) if f is None]
        every = len(missing) == len(names)
        computed = None
        if missing:
            began = time.perf_counter()
            computed = resnet(images if every else images[missing])
            self.resnet_seconds += time.perf_counter() - began  # on a GPU: the time to queue the work
            self.out_dtype = computed.dtype
        for j, i in enumerate(missing):
            found[i] = computed[j]
            self._put(names[i], computed[j])
        self.misses += len(missing)
        self.hits += len(names) - len(missing)
        if every:
            return computed
        return torch.stack([f.to(device=images.device, dtype=self.out_dtype, non_blocking=True) for f in found])

    def _get(self, name: bytes) -> Optional[Tensor]:
        slot = self.index.get(name)
        if slot is None:
            return None
        if self.store is None:
            return self.slots[slot]
        return torch.from_numpy(np.array(self.store[slot]))

    def _put(self, name: bytes, value: Tensor):
        if name in self.index:
            return
        if self.shape is None:
            self.shape = tuple(value.shape)
            self.item_bytes = value.numel() * torch.empty((), dtype=self.storage).element_size()
            logger.info("image feature cache: %s features of %s, %.2f MB an image; room for %d images in %d MB%s",
                        str(self.storage).replace("torch.", ""), list(self.shape), self.item_bytes / 2 ** 20,
                        self.capacity, self.limit_bytes // 2 ** 20, f" ({self.path})" if self.path else " (memory)")
        if tuple(value.shape) != self.shape:
            raise ValueError(f"image features of shape {list(value.shape)} after {list(self.shape)}: one cache holds "
                             "one image size")
        if len(self.index) >= self.capacity:
            if not self._full_said:
                self._full_said = True
                logger.warning("image feature cache full at %d images (--image-feature-cache-mb %d): further images "
                               "are computed every time", len(self.index), self.limit_bytes // 2 ** 20)
            return
        slot = len(self.index)
        kept = value.detach().to("cpu", self.storage, copy=True)
        if self.path is None:
            self.slots.append(kept)
        else:
            if self.store is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self.store = np.lib.format.open_memmap(self.path, mode="w+", dtype=_numpy(self.storage),
                                                       shape=(self.capacity, *self.shape))
            self.store[slot] = kept.numpy()
        self.index[name] = slot
        if self.path is not None and len(self.index) - self._indexed >= max(64, self.capacity // 50):
            self.save_index()

    # --- the disk cache across runs ---------------------------------------------------------------------
    @property
    def index_path(self) -> str:
        return self.path + ".index.npz"

    def _open(self, resnet):
        """At the first lookup (the ResNet's weights are loaded by then): take the features a run before this one
        kept, if they were made by the same ResNet with the same settings."""
        self._opened = True
        self._resnet = resnet_digest(resnet)
        atexit.register(self.save_index)
        why = self._reusable()
        if why is not None:
            if why:
                logger.info("image feature cache: starting anew in %s (%s)", self.path, why)
            return
        with np.load(self.index_path) as saved:
            keys = saved["keys"]
            self.shape, self.out_dtype = tuple(int(x) for x in saved["shape"]), getattr(torch, str(saved["out_dtype"]))
        self.item_bytes = int(np.prod(self.shape)) * torch.empty((), dtype=self.storage).element_size()
        store = np.load(self.path, mmap_mode="r+")
        usable = min(len(keys), self.capacity, len(store))
        self.store, self.index = store, {keys[i].tobytes(): i for i in range(usable)}
        self._indexed = len(self.index)
        logger.info("image feature cache: %d images' features found in %s, kept by an earlier run", usable, self.path)

    def _reusable(self) -> Optional[str]:
        """None if the files of a run before can be used, else why not ('' when there are none)."""
        if not (os.path.isfile(self.path) and os.path.isfile(self.index_path)):
            return ""
        try:
            with np.load(self.index_path) as saved:
                record = {k: str(saved[k]) for k in ("format", "storage", "resnet")}
            store = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, KeyError) as e:
            return f"its files cannot be read: {e}"
        wanted = {"format": str(FORMAT), "storage": str(self.storage).replace("torch.", ""), "resnet": self._resnet}
        changed = [k for k in wanted if record[k] != wanted[k]]
        if changed:
            return "kept with another " + ", ".join({"format": "file format", "storage": "--image-feature-cache-dtype",
                                                     "resnet": "ResNet (weights)"}[k] for k in changed)
        if store.dtype != _numpy(self.storage):
            return f"its features are {store.dtype}"
        return None

    def save_index(self):
        """Write the index of the features on disk (after flushing them: an index never names unwritten ones)."""
        if self.store is None or len(self.index) == self._indexed:
            return
        self.store.flush()
        keys = np.zeros((len(self.index), 16), dtype=np.uint8)
        for name, slot in self.index.items():
            keys[slot] = np.frombuffer(name, dtype=np.uint8)
        with atomic_path(self.index_path, ".npz") as tmp:
            np.savez(tmp, keys=keys, shape=np.array(self.shape), format=np.array(FORMAT),
                     storage=np.array(str(self.storage).replace("torch.", "")), resnet=np.array(self._resnet),
                     out_dtype=np.array(str(self.out_dtype).replace("torch.", "")))
        self._indexed = len(self.index)

    def report(self) -> str:
        """Since the last report: the lookups found, and the share of the time the ResNet took on the images not
        found (what the cache saves on the images it holds)."""
        total, now = self.hits + self.misses, time.perf_counter()
        share = self.resnet_seconds / max(now - self._reported_at, 1e-9)
        line = (f"image feature cache: {len(self.index)} images, {self.size_bytes / 2 ** 20:.1f} MB; "
                f"{self.hits} of {total} lookups found since the last report, the ResNet took {share:.0%} of that "
                f"time on the {self.misses} not found")
        self.hits = self.misses = 0
        self.resnet_seconds, self._reported_at = 0.0, now
        self.save_index()
        return line


def _numpy(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype
