"""Images from OFA's TSVs: base64 -> RGB -> resized, normalized tensor (load_image, for every form a row's image
takes), and the key naming an image's features in --image-feature-cache (image_key)."""
import base64
import binascii
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from PIL import Image

from .decoded_images import DecodedImage

OFA_MEAN, OFA_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BadImage(ValueError):
    pass


# OFA's tools write images with either alphabet (its readers use urlsafe_b64decode, which reads both):
# '-' and '_' are the URL-safe spellings of '+' and '/'.
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def b64_bytes(text: str) -> bytes:
    """The bytes of base64 text in the standard or the URL-safe alphabet (as OFA reads both). Anything
    else (other characters, wrong padding) is BadImage, never silently skipped as b64decode would."""
    try:
        return base64.b64decode(text.translate(_URLSAFE_TO_STANDARD), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"not base64 in either alphabet, standard or URL-safe ({e})")


@dataclass(frozen=True)
class ImageSettings:
    """How a task preprocesses its images: the square side they are resized to (--patch-image-size), and whether
    they are normalized with ImageNet's mean and std instead of OFA's (--imagenet-default-mean-and-std)."""
    patch_size: int
    imagenet: bool = False


class CachedImage(NamedTuple):
    """A row's image whose features --image-feature-cache keeps: its size, not its pixels."""
    width: int
    height: int


class LoadedImage(NamedTuple):
    """A row's image as a sample holds it: the normalized [3, S, S] tensor and the original size (boxes need it)."""
    patch: torch.Tensor
    width: int
    height: int


ImageSource = Union[str, Image.Image, CachedImage, DecodedImage]


def load_image(source: ImageSource, settings: ImageSettings) -> LoadedImage:
    """A row's image from any of its forms: base64 text (a TSV's column), an RGB PIL image (the Python API's,
    ofa_prompt.predictor), the resized pixels --decoded-image-cache kept (DecodedImage), or a CachedImage,
    whose features the model looks up (zeros: its pixels are never read)."""
    if isinstance(source, CachedImage):
        return LoadedImage(torch.zeros(3, settings.patch_size, settings.patch_size), source.width, source.height)
    if isinstance(source, DecodedImage):
        return LoadedImage(normalized(source.pixels, settings.imagenet), source.width, source.height)
    image = source if isinstance(source, Image.Image) else decode_image(source)
    return LoadedImage(to_tensor(image, settings.patch_size, settings.imagenet), image.width, image.height)


def decoded_resized(b64: str, size: int) -> DecodedImage:
    """What --decoded-image-cache keeps of a row's image: its pixels resized to `size`, and its original size."""
    image = decode_image(b64)
    return DecodedImage(resized(image, size), image.width, image.height)


def image_key(b64: str, settings: ImageSettings) -> torch.Tensor:
    """[2] int64: a digest of a row's image (its base64 text) and of its preprocessing, naming its features in
    --image-feature-cache (the digest a disk cache of an earlier run was keyed by: its inputs do not change)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([settings.patch_size, settings.imagenet]).encode())
    digest.update(b64.encode())
    return torch.from_numpy(np.frombuffer(digest.digest(), dtype=np.int64).copy())


def decode_image(b64: str) -> Image.Image:
    """An RGB image from base64 text; any mode (palette, CMYK, 16-bit, alpha) is converted. Raises
    BadImage for text that is not base64, bytes that are no image, and decompression bombs."""
    raw = b64_bytes(b64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb: {e}")
    except Exception as e:  # PIL raises many types for corrupt data
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})")
    return as_rgb(image)


def as_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB, from any mode: 16/32-bit grey scaled to 8 bits, transparency over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before RGB
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_size_of(b64: str):
    """(width, height) for cheap validation of every row at start-up: the header is parsed and the body
    checked for completeness (a truncated file would otherwise fail only when batched, mid-training)."""
    raw = b64_bytes(b64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            problem = body_problem(image, raw)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb: {e}")
    except Exception as e:  # PIL raises many types for corrupt data
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})")
    if problem:
        raise BadImage(f"truncated or corrupt image: {problem}")
    return image.size


def body_problem(image: Image.Image, raw: bytes) -> Optional[str]:
    """Why the body of an opened image is incomplete, or None. JPEG and PNG, nearly all of OFA's data, are
    checked by their end markers without decoding (datasets have 500k rows); rarer formats are decoded."""
    if image.format in ("JPEG", "MPO"):  # MPO: several JPEGs in one file, as cameras write
        return None if jpeg_has_end(raw) else "JPEG without an end-of-image marker after its last scan"
    if image.format == "PNG":
        return png_chunk_problem(raw)
    try:
        image.load()
    except Exception as e:
        return f"{image.format} does not decode ({type(e).__name__}: {e})"
    return None


def jpeg_has_end(raw: bytes) -> bool:
    # entropy-coded data stuffs every FF byte as FF 00, so FF D9 after the last start-of-scan (FF DA) can
    # only be the end-of-image marker; an embedded thumbnail's markers come before the main scans
    sos = raw.rfind(b"\xff\xda")
    return sos >= 0 and raw.find(b"\xff\xd9", sos + 2) >= 0


def png_chunk_problem(raw: bytes) -> Optional[str]:
    """Walks the chunks (length, type, data, CRC) after the 8-byte signature: each must fit in the file,
    up to IEND. Searching for the bytes IEND instead could match inside compressed image data."""
    at = 8
    while at + 8 <= len(raw):
        length, kind = int.from_bytes(raw[at:at + 4], "big"), raw[at + 4:at + 8]
        at += 12 + length
        if at > len(raw):
            return f"PNG chunk {kind.decode('latin-1')!r} runs past the end of the data"
        if kind == b"IEND":
            return None
    return "PNG without an IEND chunk"


def to_tensor(image: Image.Image, size: int, imagenet: bool = False) -> torch.Tensor:
    """[3, size, size] float, resized with bicubic interpolation and normalized as OFA does: OFA's torchvision
    pipeline (Resize((size, size), BICUBIC), ToTensor, Normalize) with its operations in its order, so the
    values are the same to the bit, in place and without its per-call transform objects (0.9x its time)."""
    return normalized(resized(image, size), imagenet)


def resized(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the image resized with bicubic interpolation (torchvision's Resize on a PIL image)."""
    return np.array(image.resize((size, size), Image.BICUBIC))


def normalized(pixels: np.ndarray, imagenet: bool = False) -> torch.Tensor:
    """[3, S, S] float from uint8 [S, S, 3] pixels: torchvision's ToTensor then Normalize, the same operations."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).contiguous().float().div_(255)  # contiguous(): a copy
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (OFA_MEAN, OFA_STD)
    return x.sub_(torch.tensor(mean)[:, None, None]).div_(torch.tensor(std)[:, None, None])
