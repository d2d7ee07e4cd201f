"""Visual grounding: boxes as location tokens, IoU and Acc@0.5."""
import re
from typing import List, Sequence

Box = Sequence[float]  # x1, y1, x2, y2


def box_iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def quantize_box(box: Box, num_bins: int, max_image_size: float) -> List[int]:
    """Coordinates (in pixels of the resized image) -> bin ids 0..num_bins-1 over [0, max_image_size]."""
    return [min(max(int(round(c / max_image_size * (num_bins - 1))), 0), num_bins - 1) for c in box]


def dequantize_box(bins: Sequence[int], num_bins: int, max_image_size: float) -> List[float]:
    return [b / (num_bins - 1) * max_image_size for b in bins]


def bins_to_box(text: str, num_bins: int, max_image_size: float, w_ratio: float, h_ratio: float) -> List[float]:
    """'<bin_a> <bin_b> <bin_c> <bin_d>' -> box in original-image pixels (None if not four bins)."""
    bins = [int(b) for b in re.findall(r"<bin_(\d+)>", text)]
    if len(bins) != 4:
        return None
    x1, y1, x2, y2 = dequantize_box(bins, num_bins, max_image_size)
    return [x1 / w_ratio, y1 / h_ratio, x2 / w_ratio, y2 / h_ratio]


def acc_at_iou(pred: Box, gt: Box, threshold: float = 0.5) -> float:
    return float(pred is not None and box_iou(pred, gt) >= threshold)
