"""Relative-position buckets and image patch ids, as OFA defines them.

Pure functions of the configuration: the model builds them as (non-persistent in spirit) buffers,
and official checkpoints may or may not carry them, so they are recomputed on every load.
"""
import math

import torch

# OFA builds the token bucket table for 1024 positions whatever max_source_positions is.
TOKEN_BUCKET_MAX_POSITION = 1024


def token_bucket(distance: torch.Tensor, bucket_size: int, max_position: int = TOKEN_BUCKET_MAX_POSITION):
    """Bucket index (0 .. 2*bucket_size-2) of a signed query-key distance i - j.

    Distances up to bucket_size // 2 keep their own bucket; longer ones share log-spaced buckets.
    """
    mid = bucket_size // 2
    sign = torch.sign(distance)
    magnitude = distance.abs()
    # log buckets: mid + ceil(log(|d| / mid) / log((max_position - 1) / mid) * (mid - 1)), in float32
    # as OFA computes them (float64 would move a few boundary distances to the next bucket)
    log_pos = torch.ceil(
        torch.log(magnitude.clamp(min=1).float() / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ).long() + mid
    return torch.where(magnitude <= mid, distance, log_pos * sign) + bucket_size - 1


def token_bucket_matrix(bucket_size: int, max_position: int = TOKEN_BUCKET_MAX_POSITION) -> torch.Tensor:
    """[max_position, max_position] bucket index of every (query, key) text position pair."""
    pos = torch.arange(max_position)
    return token_bucket(pos[:, None] - pos[None, :], bucket_size, max_position)


def num_image_buckets(bucket_size: int) -> int:
    """Rows of an image relative-position table: every (dh, dw) offset plus three specials."""
    return (2 * bucket_size - 1) ** 2 + 3


def image_bucket_matrix(bucket_size: int) -> torch.Tensor:
    """[B*B+1, B*B+1] bucket index between patch ids (id = row * B + col + 1; id 0 is special)."""
    coords = torch.stack(torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij"))
    coords = coords.flatten(1)  # [2, B*B]
    rel = coords[:, :, None] - coords[:, None, :] + bucket_size - 1  # [2, B*B, B*B]
    n = num_image_buckets(bucket_size)
    out = torch.empty(bucket_size * bucket_size + 1, bucket_size * bucket_size + 1, dtype=torch.long)
    out[1:, 1:] = rel[0] * (2 * bucket_size - 1) + rel[1]
    out[0, :] = n - 3
    out[:, 0] = n - 2
    out[0, 0] = n - 1
    return out


def image_position_ids(height: int, width: int, bucket_size: int, device=None) -> torch.Tensor:
    """Row-major ids (r * bucket_size + c + 1) of an height x width patch grid."""
    rows = torch.arange(height, device=device)[:, None] * bucket_size
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols + 1).flatten()
