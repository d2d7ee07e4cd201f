"""Start-up cost of opening a training TSV: checking every row, against using the record of an earlier
check (ofa_prompt.data.row_index).

    python benchmarks/startup_check.py [--rows 20000] [--repeats 3] [--task caption]

The file holds --rows rows of one 640x480 JPEG each (OFA's base64), written once. Each repetition sets up a
fresh task and loads the training split twice: with the record removed (the full check, which writes a new
record) and with it (the record is used). Printed: medians and min-max, seconds per million rows, the
ratio, and the load average.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def write_rows(folder, n):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = (rng.random((480, 640, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    image = base64.urlsafe_b64encode(buffer.getvalue()).decode()
    path = os.path.join(folder, "train.tsv")
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{i}\t{i}\ta red square on white&&a square\tsquare\t{image}\n")
    with open(os.path.join(folder, "valid.tsv"), "w") as f:
        f.write(f"0\t0\ta square\tsquare\t{image}\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    import ofa_prompt
    import tiny_data
    from ofa_prompt.data import row_index

    ofa_prompt.load()  # the tasks, registered with fairseq

    with tempfile.TemporaryDirectory() as folder:
        os.environ["XDG_CACHE_HOME"] = os.path.join(folder, "cache")
        tiny_data.write_dict(Path(folder))
        path = write_rows(folder, args.rows)
        size = os.path.getsize(path)
        print(f"{args.rows} rows, {size / 1e6:.0f} MB ({size / args.rows / 1e3:.0f} kB a row), task caption")
        checked, recorded, loads = [], [], []
        for _ in range(args.repeats):
            for use_record in (False, True):
                if not use_record:
                    for candidate in row_index.record_paths(path):
                        if os.path.exists(candidate):
                            os.unlink(candidate)
                cfg = TASK_DATACLASS_REGISTRY["caption"](data=f"{path},{folder}/valid.tsv", bpe_dir=folder,
                                                         text_tokenizer="word", code_dict_size=0, num_bins=100)
                task = TASK_REGISTRY["caption"].setup_task(cfg)
                start = time.perf_counter()
                task.load_dataset("train")
                seconds = time.perf_counter() - start
                assert task.datasets["train"].reader.from_index == use_record
                (recorded if use_record else checked).append(seconds)
            loads.append(os.getloadavg()[0])
        per_m = 1e6 / args.rows
        c, r = statistics.median(checked), statistics.median(recorded)
        print(f"checking every row:      {c:7.3f} s ({min(checked):.3f}-{max(checked):.3f}) "
              f"= {c * per_m:8.1f} s per M rows")
        print(f"with the earlier record: {r:7.3f} s ({min(recorded):.3f}-{max(recorded):.3f}) "
              f"= {r * per_m:8.1f} s per M rows")
        print(f"record / check: {r / c:.4f}x; load average {min(loads):.2f}-{max(loads):.2f}")


if __name__ == "__main__":
    main()
