"""Images from OFA's TSVs: base64 -> RGB -> resized, normalized tensor."""
import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image

OFA_MEAN, OFA_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BadImage(ValueError):
    pass


def decode_image(b64: str) -> Image.Image:
    """An RGB image from base64 text; any mode (palette, CMYK, 16-bit, alpha) is converted. Raises
    BadImage for text that is not base64, bytes that are no image, and decompression bombs."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"not base64 ({e})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb: {e}")
    except Exception as e:  # PIL raises many types for corrupt data
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before RGB
        arr = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_size_of(b64: str):
    """(width, height) from the header only, for cheap validation of every row."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
            return image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a decompression bomb: {e}")
    except (binascii.Error, ValueError) as e:
        raise BadImage(f"not base64 ({e})")
    except Exception as e:
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})")


def to_tensor(image: Image.Image, size: int, imagenet: bool = False) -> torch.Tensor:
    """[3, size, size] float, resized with bicubic interpolation and normalized as OFA does."""
    image = image.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (OFA_MEAN, OFA_STD)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
