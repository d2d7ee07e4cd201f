"""A cache of the frozen ResNet's image features (`--image-feature-cache`).

Under prompt tuning, adapters or BitFit the ResNet is frozen and in eval mode, and OFA's preprocessing of
caption, VQA, SNLI-VE and RefCOCO images has no random augmentation: an image's features are the same in
every epoch. The ResNet forward is the largest single cost of a prompt-tuning step, so from the second
epoch on the features are looked up instead of computed, and the dataset does not decode those images
at all (OFADataset: a cached row's image becomes a CachedImage placeholder of its size).

Features are keyed by a digest of the row's image bytes and the preprocessing settings (the dataset's
`image_key`), and kept in memory or in a memory-mapped file (under --save-dir), up to a size limit; once
full, further images are computed as usual. The values kept are the ones the ResNet gave: a cached step
computes what an uncached one does, to the bit where the ResNet's result for an image does not depend on
the batch around it (true for equal batch sizes on the CPUs measured; a batch of another size may differ
by float rounding).
"""
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class ImageFeatureCache:
    def __init__(self, limit_mb: int, path: Optional[str] = None):
        """limit_mb: the most the features may take; path: a file for the memory map (None: in memory)."""
        if limit_mb < 1:
            raise ValueError(f"--image-feature-cache-mb={limit_mb}: give at least 1 MB")
        self.limit_bytes, self.path = limit_mb * 2 ** 20, path
        self.index: Dict[bytes, int] = {}  # key -> slot
        self.slots: List[Tensor] = []  # in memory: one tensor per slot
        self.store: Optional[np.memmap] = None  # on disk: [slots, *shape]
        self.shape = self.dtype = None
        self.item_bytes = 0  # the features of one image
        self.hits = self.misses = 0
        self._full_said = False

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
        names = [k.tobytes() for k in keys.cpu().numpy().astype(np.int64)]
        found = [self._get(name) for name in names]
        missing = [i for i, f in enumerate(found) if f is None]
        every = len(missing) == len(names)
        computed = resnet(images if every else images[missing]) if missing else None
        for j, i in enumerate(missing):
            found[i] = computed[j]
            self._put(names[i], computed[j])
        self.misses += len(missing)
        self.hits += len(names) - len(missing)
        if every:
            return computed
        return torch.stack([f.to(device=images.device, non_blocking=True) for f in found])

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
            self.shape, self.dtype = tuple(value.shape), value.dtype
            self.item_bytes = value.numel() * value.element_size()
            logger.info("image feature cache: %s features of %s, %.2f MB an image; room for %d images in %d MB%s",
                        str(self.dtype).replace("torch.", ""), list(self.shape), self.item_bytes / 2 ** 20,
                        self.capacity, self.limit_bytes // 2 ** 20, f" ({self.path})" if self.path else " (memory)")
        if tuple(value.shape) != self.shape or value.dtype != self.dtype:
            raise ValueError(f"image features of shape {list(value.shape)} ({value.dtype}) after {list(self.shape)} "
                             f"({self.dtype}): one cache holds one image size")
        if len(self.index) >= self.capacity:
            if not self._full_said:
                self._full_said = True
                logger.warning("image feature cache full at %d images (--image-feature-cache-mb %d): further images "
                               "are computed every time", len(self.index), self.limit_bytes // 2 ** 20)
            return
        slot = len(self.index)
        if self.path is None:
            self.slots.append(value.detach().to("cpu", copy=True))
        else:
            if self.store is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self.store = np.lib.format.open_memmap(self.path, mode="w+", dtype=_numpy(self.dtype),
                                                       shape=(self.capacity, *self.shape))
            self.store[slot] = value.detach().cpu().numpy()
        self.index[name] = slot

    def report(self) -> str:
        total = self.hits + self.misses
        line = (f"image feature cache: {len(self.index)} images, {self.size_bytes / 2 ** 20:.1f} MB; "
                f"{self.hits} of {total} lookups found since the last report")
        self.hits = self.misses = 0
        return line


def _numpy(dtype: torch.dtype):
    if dtype == torch.bfloat16:
        raise ValueError("--image-feature-cache disk keeps float32 or float16 features; with --bf16 use memory")
    return torch.empty((), dtype=dtype).numpy().dtype
