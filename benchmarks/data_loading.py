"""Data loading: the caption dataset with its collater against a plain loop over the same TSV.

    python benchmarks/data_loading.py [--rows 200] [--image 480] [--repeats 3]

The TSV holds --rows rows, each a different 640x480 JPEG (smooth synthetic scenes, about 60 kB; OFA's
base64). The plain loop reads each line, urlsafe_b64decode's the image and runs torchvision's Resize((S, S),
BICUBIC), ToTensor and Normalize, as OFA's datasets do. The dataset runs the whole task: the row, the
instruction and caption tokens, the image, batches of 8 collated; with 0 and 2 dataloader workers; with
--decoded-image-cache once every row was read (epochs after the first: the kept, resized pixels are
normalized, nothing is decoded); and with --image-feature-cache once every image's features are cached
(rows are not decoded, and no pixels are made at all).
One torch thread. Rows per second: medians of interleaved repetitions, min-max, load average.
"""
import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def write_rows(path, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            coarse = (rng.random((12, 16, 3)) * 255).astype("uint8")
            image = Image.fromarray(coarse).resize((640, 480), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            b64 = base64.urlsafe_b64encode(buffer.getvalue()).decode()
            f.write(f"{i}\t{i}\ta red square on white&&a square\tsquare\t{b64}\n")


def plain_loop(path, size):
    """Rows/s of the plain reading of every row's image."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    start, n = time.perf_counter(), 0
    with open(path) as f:
        for line in f:
            image = Image.open(io.BytesIO(base64.urlsafe_b64decode(line.rstrip("\n").split("\t")[4]))).convert("RGB")
            transform(image)
            n += 1
    return n / (time.perf_counter() - start)


def dataset_rows(ds, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=ds.collater, num_workers=workers)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["nsentences"]
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    import ofa_prompt
    import tiny_data
    from ofa_prompt.data.image import image_key
    from ofa_prompt.models.image_cache import ImageFeatureCache

    ofa_prompt.load()  # the tasks, registered with fairseq

    with tempfile.TemporaryDirectory() as folder:
        tiny_data.write_dict(Path(folder))
        path = os.path.join(folder, "train.tsv")
        write_rows(path, args.rows)
        print(f"{args.rows} rows of 640x480 JPEGs ({os.path.getsize(path) / args.rows / 1e3:.0f} kB a row) at "
              f"{args.image} px, one torch thread")
        datasets = {}
        for kind in ("plain", "decoded once", "cached features"):
            cfg = TASK_DATACLASS_REGISTRY["caption"](
                data=f"{path},{path}", bpe_dir=folder, text_tokenizer="word", code_dict_size=0, num_bins=100,
                patch_image_size=args.image, image_feature_cache="memory" if kind == "cached features" else "none",
                decoded_image_cache="memory" if kind == "decoded once" else "none")
            task = TASK_REGISTRY["caption"].setup_task(cfg)
            task.load_dataset("train")
            ds = datasets[kind] = task.datasets["train"]
            if kind == "decoded once":  # every row read once, as after the first epoch
                dataset_rows(ds, 0)
                assert ds.decoded.kept() == len(ds)
            if kind == "cached features":  # every image's features kept, as after the first epoch
                task.image_cache = ImageFeatureCache(1)
                for i in range(len(ds)):
                    task.image_cache.index[image_key(ds.reader[i][1], task.image_settings).numpy().tobytes()] = i
        runs = {"plain loop": lambda: plain_loop(path, args.image)}
        for workers in (0, 2):
            for kind, ds in datasets.items():
                name = f"dataset, {workers} workers" + ("" if kind == "plain" else f", {kind}")
                runs[name] = lambda w=workers, d=ds: dataset_rows(d, w)
        results, loads = {name: [] for name in runs}, []
        for _ in range(args.repeats):
            for name, fn in runs.items():
                results[name].append(fn())
                loads.append(os.getloadavg()[0])
        plain = results["plain loop"]
        for name, values in results.items():
            ratios = [v / p for v, p in zip(values, plain)]
            print(f"{name:40s} {statistics.median(values):7.1f} rows/s ({min(values):.1f}-{max(values):.1f}), "
                  f"{statistics.median(ratios):.2f}x the plain loop ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"load average {min(loads):.2f}-{max(loads):.2f}")


if __name__ == "__main__":
    main()
