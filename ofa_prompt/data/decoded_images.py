"""Training images kept after their first decoding (`--decoded-image-cache`).

Decoding a row's JPEG and resizing it to --patch-image-size is most of the cost of reading a row, and OFA's
preprocessing of caption, VQA, SNLI-VE and RefCOCO images is deterministic: a row's resized image is the same
in every epoch. So the first time a training row is read, its resized image (uint8, [S, S, 3]: 0.7 MB at
480 px) and its original size are kept; later epochs normalize the kept pixels instead of decoding again.
What a step sees is the same to the bit: the normalization that follows is the same operations on the same
bytes (ofa_prompt.data.image.normalized). Unlike --image-feature-cache this also holds for finetuning, which
trains the ResNet: only the input pixels are kept.

Slots are rows: row i of the training file has slot i, for the first `capacity` rows that fit in the limit
(the others are decoded every epoch). The slots live in one shared mapping, anonymous memory or a file
`<save-dir>/decoded_images*.npy`, made when the file is opened, before fairseq forks its dataloader workers:
each worker writes the rows it reads, and every worker sees them, whether fairseq keeps its workers between
epochs or makes them anew. A row is only ever written by the one worker reading it in an epoch; its
`filled` flag is set after its pixels.
"""
import logging
import mmap
import os
from typing import NamedTuple, Optional

import numpy as np

logger = logging.getLogger(__name__)


class DecodedImage(NamedTuple):
    """A row's image as --decoded-image-cache keeps it: resized pixels and the original size."""
    pixels: np.ndarray  # uint8 [S, S, 3]
    width: int
    height: int


class DecodedImageStore:
    def __init__(self, rows: int, size: int, limit_mb: int, path: Optional[str] = None):
        """Slots for the first rows of a `rows`-row file whose [size, size, 3] images fit in `limit_mb`; in
        anonymous shared memory, or in a memory-mapped file at `path`."""
        if limit_mb < 1:
            raise ValueError(f"--decoded-image-cache-mb={limit_mb}: give at least 1 MB")
        item = size * size * 3
        self.capacity, self.size, self.path = min(rows, limit_mb * 2 ** 20 // item), size, path
        # per slot: the pixels, then the original width and height (int32) and the filled flag
        layout = np.dtype([("pixels", np.uint8, (size, size, 3)), ("width", np.int32), ("height", np.int32),
                           ("filled", np.uint8)])
        if self.capacity == 0:
            self.slots = np.zeros(0, layout)
        elif path is None:
            # MAP_SHARED | MAP_ANONYMOUS: inherited by forked workers, pages taken only when written
            self.slots = np.frombuffer(mmap.mmap(-1, self.capacity * layout.itemsize), layout)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.slots = np.lib.format.open_memmap(path, mode="w+", dtype=layout, shape=(self.capacity,))
        logger.info("decoded image cache: room for %d of %d training rows' %dx%d images (%.2f MB each, limit %d MB, "
                    "%s)", self.capacity, rows, size, size, item / 2 ** 20, limit_mb, path or "memory")

    def __getstate__(self):  # a spawned worker gets no slots (decodes as usual); forked ones share them
        return {**self.__dict__, "slots": np.zeros(0, self.slots.dtype), "capacity": 0}

    def holds(self, row: int) -> bool:
        """Whether `row` has a slot (it is kept once decoded)."""
        return row < self.capacity

    def get(self, row: int) -> Optional[DecodedImage]:
        if row >= self.capacity or not self.slots["filled"][row]:
            return None
        slot = self.slots[row]
        return DecodedImage(slot["pixels"], int(slot["width"]), int(slot["height"]))

    def put(self, row: int, image: DecodedImage):
        if row >= self.capacity:
            return
        if image.pixels.shape != (self.size, self.size, 3):
            raise ValueError(f"decoded image cache: an image of {list(image.pixels.shape)}, slots of "
                             f"{[self.size, self.size, 3]}")
        slot = self.slots[row:row + 1]
        slot["pixels"][0], slot["width"][0], slot["height"][0] = image.pixels, image.width, image.height
        slot["filled"][0] = 1  # last: a reader seeing the flag sees the pixels

    def kept(self) -> int:
        return int(self.slots["filled"].sum())
