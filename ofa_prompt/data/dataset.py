"""A fairseq dataset over an OFA TSV file. It knows no task and no model: it is given the task's sample builder
and, for the image caches, how rows' images are keyed and which of them the model keeps (FeatureLookup) and the
file's store of decoded images."""
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from omegaconf.errors import OmegaConfBaseException

from .collate import collate
from .decoded_images import DecodedImage, DecodedImageStore
from .image import CachedImage, ImageSettings, decoded_resized, image_key, image_size_of

SampleBuilder = Callable[[List, bool], dict]  # (a row's columns, whether for training) -> the sample


@dataclass(frozen=True)
class FeatureLookup:
    """--image-feature-cache as a dataset sees it: a row's image is named by image_key(image, settings), and
    `kept(key)` says whether the model keeps its features. It is asked at every read, as fairseq-train loads
    the validation set before it builds the model the cache belongs to."""
    settings: ImageSettings
    kept: Callable[[torch.Tensor], bool]


def rows_per_batch(batch_size, max_tokens, max_src_length: int) -> int:
    """Rows in each batch: --batch-size, else as many --max-src-length rows as fit in --max-tokens."""
    per = batch_size or (max_tokens // max_src_length if max_tokens else 0)
    if per < 1:
        raise ValueError("set --batch-size (or a --max-tokens of at least --max-src-length)")
    return per


def training_seed(task_cfg) -> int:
    """fairseq's --seed as a task's config holds it; fairseq's default (1) for a config without fairseq's
    common section (built directly, as by the Python API) or saved by a version that did not keep it."""
    try:
        seed = task_cfg.seed
    except (AttributeError, OmegaConfBaseException):  # absent, or an interpolation with nothing to resolve
        return 1
    return seed if isinstance(seed, int) else 1


class OFADataset(FairseqDataset):
    """A row's image reaches `build_sample` in the cheapest form that gives the same sample: a CachedImage where
    the model keeps its features (never decoded), the pixels --decoded-image-cache kept, else the base64 text."""

    def __init__(self, reader, build_sample: SampleBuilder, *, train: bool, pad: int, seed: int, max_src_length: int,
                 max_tgt_length: int, features: Optional[FeatureLookup] = None,
                 decoded: Optional[DecodedImageStore] = None):
        """pad: the dictionary's padding index (collation); seed: fairseq's --seed (training_seed), which with the
        epoch and the row seeds numpy's draws; features: under --image-feature-cache; decoded: the file's
        DecodedImageStore under --decoded-image-cache."""
        self.reader, self.build_sample, self.train = reader, build_sample, train
        self.pad, self.seed = pad, seed
        self.max_src_length, self.max_tgt_length = max_src_length, max_tgt_length
        self.features, self.decoded = features, decoded
        self.epoch = 1

    def set_epoch(self, epoch):  # fairseq's epoch iterator calls it at the start of every epoch
        self.epoch = epoch

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, index):
        row, key = self.reader[index], None
        try:
            if self.features is not None:
                key = image_key(row[1], self.features.settings)
                if self.features.kept(key):
                    # its features are kept: the model will not look at the pixels, so they are not decoded
                    row = [row[0], CachedImage(*image_size_of(row[1])), *row[2:]]
            if self.decoded is not None and self.decoded.holds(index) and not isinstance(row[1], CachedImage):
                row = [row[0], self.decoded_image(index, row[1]), *row[2:]]
            with data_utils.numpy_seed(self.seed, self.epoch, index):  # numpy's draws repeat run to run
                sample = self.build_sample(row, self.train)
        except ValueError as e:  # content that passed the start-up check but fails on full decoding
            raise ValueError(f"{self.reader.where(index)}: {e}") from e
        sample["id"] = index
        if key is not None:
            sample["image_key"] = key
        return sample

    def decoded_image(self, index: int, b64: str) -> DecodedImage:
        """Row `index`'s resized image: kept from an earlier epoch, or decoded now and kept."""
        kept = self.decoded.get(index)
        if kept is None:
            kept = decoded_resized(b64, self.decoded.size)
            self.decoded.put(index, kept)
        return kept

    def num_tokens(self, index):  # an upper bound: rows are only read when batched
        return self.max_src_length

    def num_tokens_vec(self, indices):
        return np.full(len(indices), self.max_src_length, dtype=np.int64)

    def size(self, index):
        return self.max_src_length, self.max_tgt_length

    def ordered_indices(self):
        return np.arange(len(self))

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """Fixed-size batches of every row (OFA batches by --batch-size). fairseq's own batch_by_size
        drops a final batch smaller than --required-batch-size-multiple, i.e. rows would go unseen."""
        per = rows_per_batch(max_sentences, max_tokens, self.max_src_length)
        return [indices[i:i + per] for i in range(0, len(indices), per)]

    def collater(self, samples):
        return collate(samples, self.pad)


class MixDataset(OFADataset):
    """Several tasks' OFADatasets as one (`--task mix`), batched and collated as they are. The order is
    shuffled (fairseq seeds it per epoch), so that batches mix the tasks."""

    def __init__(self, parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.pad = parts[0].pad
        self.max_src_length = max(p.max_src_length for p in parts)
        self.max_tgt_length = max(p.max_tgt_length for p in parts)

    def set_epoch(self, epoch):
        for part in self.parts:
            part.set_epoch(epoch)

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, index):
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        sample = self.parts[part][int(index - self.starts[part])]
        sample["id"] = index
        return sample

    def ordered_indices(self):
        return np.random.permutation(len(self))
