"""Samples into a batch: the tensors fairseq's models, generators and OFA's criteria read, padded with the
dictionary's padding index. A plain function, used by the datasets and by the Python API alike."""
from typing import List

import torch
from fairseq.data import data_utils


def collate(samples: List[dict], pad_idx: int) -> dict:
    """One batch of samples as the tasks build them (source, target, prev_output_tokens, patch_image, ...);
    an empty dict for no samples."""
    if not samples:
        return {}

    def pad(key):
        return data_utils.collate_tokens([s[key] for s in samples], pad_idx)

    src = pad("source")
    target = pad("target")
    batch = {
        "id": torch.tensor([s["id"] for s in samples]),
        "nsentences": len(samples),
        "ntokens": int(target.ne(pad_idx).sum()),
        "net_input": {
            "src_tokens": src,
            "src_lengths": src.ne(pad_idx).sum(1),
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
