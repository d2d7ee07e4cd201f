"""A fairseq dataset over an OFA TSV file; the task turns each row into a sample."""
import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils
from omegaconf.errors import OmegaConfBaseException

from .decoded_images import DecodedImage
from .image import CachedImage, decode_image, image_size_of, resized


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
    def __init__(self, reader, task, train: bool, decoded=None):
        """decoded: the file's DecodedImageStore under --decoded-image-cache."""
        self.reader, self.task, self.train, self.decoded = reader, task, train, decoded
        self.pad, self.eos = task.dictionary.pad(), task.dictionary.eos()
        self.max_src_length, self.max_tgt_length = task.cfg.max_src_length, task.cfg.max_tgt_length
        self.seed = training_seed(task.cfg)
        self.epoch = 1

    def set_epoch(self, epoch):  # fairseq's epoch iterator calls it at the start of every epoch
        self.epoch = epoch

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, index):
        row, key = self.reader[index], None
        try:
            if self.task.cfg.image_feature_cache != "none":
                key = self.task.image_key(row)
                if self.task.image_cache is not None and key in self.task.image_cache:
                    # its features are kept: the model will not look at the pixels, so they are not decoded
                    row = [row[0], CachedImage(*image_size_of(row[1])), *row[2:]]
            if self.decoded is not None and self.decoded.holds(index) and not isinstance(row[1], CachedImage):
                row = [row[0], self.decoded_image(index, row[1]), *row[2:]]
            with data_utils.numpy_seed(self.seed, self.epoch, index):  # numpy's draws repeat run to run
                sample = self.task.build_sample(row, self.train)
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
            image = decode_image(b64)
            kept = DecodedImage(resized(image, self.task.cfg.patch_image_size), image.width, image.height)
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
        if not samples:
            return {}

        def pad(key):
            return data_utils.collate_tokens([s[key] for s in samples], self.pad)

        src = pad("source")
        target = pad("target")
        batch = {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(target.ne(self.pad).sum()),
            "net_input": {
                "src_tokens": src,
                "src_lengths": src.ne(self.pad).sum(1),
                "patch_images": torch.stack([s["patch_image"] for s in samples]),
                "patch_masks": torch.tensor([s.get("patch_mask", True) for s in samples]),
                "prev_output_tokens": pad("prev_output_tokens"),
            },
            "target": target,
            "uniq_ids": [s["uniq_id"] for s in samples],
            "refs": [s.get("ref") for s in samples],
            "metas": [s.get("meta", {}) for s in samples],
        }
        if "image_key" in samples[0]:  # --image-feature-cache
            batch["net_input"]["image_keys"] = torch.stack([s["image_key"] for s in samples])
        if any("conf" in s for s in samples):  # VQA's answer confidence; other tasks' rows (a mix) weigh 1
            batch["conf"] = torch.tensor([s.get("conf", 1.0) for s in samples], dtype=torch.float)
        return batch


class MixDataset(OFADataset):
    """Several tasks' OFADatasets as one (`--task mix`), batched and collated as they are. The order is
    shuffled (fairseq seeds it per epoch), so that batches mix the tasks."""

    def __init__(self, parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.pad, self.eos = parts[0].pad, parts[0].eos
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
