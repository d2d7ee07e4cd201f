"""Captioning throughput of the Python API (ofa_prompt.from_pretrained) against fairseq-generate, on the
same rows with the same model, at equal batch sizes; and a batch mixing two prompt files (caption and VQA,
OFAPredictor.mixed) against running the two tasks one after another.

    python benchmarks/api_throughput.py [--rows 32] [--repeats 3] [--batch-sizes 1 16] [--image 256]

The model is ofa_tiny (random weights, prompts of length 16 on both sides) over OFA's GPT-2 vocabulary
(../shared/ofa_bpe or $OFA_BPE_DIR). fairseq-generate's figure is its own "Translated N sentences in T s"
(the generation loop with data loading, without start-up); the API's is the wall time of
`model.caption(images)` on decoded PIL images (preprocessing included). Repetitions are interleaved; the
medians, their spread (min-max) and the load average are printed.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))


def save_model(path, task, image, bpe, length):
    """ofa_tiny (random weights, seed 0) with prompts of `length` on both sides, saved as fairseq-train saves a
    checkpoint of `task`."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    import ofa_prompt
    from ofa_prompt.data.dictionary import build_ofa_dictionary
    from ofa_prompt.models.ofa import OFAModel

    ofa_prompt.load()  # registers the model

    args = argparse.Namespace(arch="ofa_prompt_tiny", encoder_prompt=True, decoder_prompt=True,
                              encoder_prompt_length=length, decoder_prompt_length=length)
    ARCH_CONFIG_REGISTRY["ofa_prompt_tiny"](args)
    dictionary = build_ofa_dictionary(os.path.join(bpe, "dict.txt"), 8192, 1000)
    torch.manual_seed(0)
    model = OFAModel.build_model(args, argparse.Namespace(source_dictionary=dictionary, target_dictionary=dictionary))
    torch.save({"args": None, "cfg": {"model": {**vars(args), "_name": "ofa_prompt_tiny"},
                                      "task": {"_name": task, "patch_image_size": image}},
                "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "-", "optimizer_name": "-", "lr_scheduler_state": {},
                                       "num_updates": 0}]}, path)


def make_files(folder, rows, image, bpe):
    import tiny_data

    save_model(os.path.join(folder, "model.pt"), "caption", image, bpe, 16)
    table = tiny_data.rows("caption", rows, seed=0)
    tiny_data.write(os.path.join(folder, "test.tsv"), table)
    return table


def fairseq_generate(folder, bpe, batch, beam, max_len_b):
    out = subprocess.run([f"{sys.prefix}/bin/fairseq-generate", os.path.join(folder, "test.tsv"), "--user-dir",
                          os.path.join(REPO, "ofa_prompt"), "--task", "caption", "--bpe-dir", bpe, "--path",
                          os.path.join(folder, "model.pt"), "--gen-subset", "test", "--batch-size", str(batch),
                          "--beam", str(beam), "--max-len-b", str(max_len_b), "--no-repeat-ngram-size", "3",
                          "--num-workers", "0", "--cpu"], capture_output=True, text=True, check=True)
    n, seconds = re.search(r"Translated (\d+) sentences \(\d+ tokens\) in ([\d.]+)s", out.stdout + out.stderr).groups()
    return int(n) / float(seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--image", type=int, default=256)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--max-len-b", type=int, default=8)
    args = ap.parse_args()
    bpe = os.environ.get("OFA_BPE_DIR", os.path.join(os.path.dirname(REPO), "shared", "ofa_bpe"))
    from ofa_prompt import from_pretrained
    from ofa_prompt.data.image import decode_image

    with tempfile.TemporaryDirectory() as folder:
        table = make_files(folder, args.rows, args.image, bpe)
        images = [decode_image(r[4]) for r in table]
        loads = []
        print(f"{args.rows} rows, ofa_tiny at {args.image} px, beam {args.beam}, max_len_b {args.max_len_b}; "
              f"torch threads {torch.get_num_threads()}")
        for batch in args.batch_sizes:
            model = from_pretrained(os.path.join(folder, "model.pt"), bpe_dir=bpe, batch_size=batch)
            model.caption(images[:batch], beam=args.beam, max_len_b=args.max_len_b)  # warm-up
            api, cli = [], []
            for _ in range(args.repeats):  # interleaved
                start = time.perf_counter()
                model.caption(images, beam=args.beam, max_len_b=args.max_len_b)
                api.append(len(images) / (time.perf_counter() - start))
                cli.append(fairseq_generate(folder, bpe, batch, args.beam, args.max_len_b))
                loads.append(os.getloadavg()[0])
            a, c = statistics.median(api), statistics.median(cli)
            print(f"batch {batch:3d}: API {a:6.2f} images/s ({min(api):.2f}-{max(api):.2f}), fairseq-generate "
                  f"{c:6.2f} ({min(cli):.2f}-{max(cli):.2f}): API / fairseq-generate {a / c:.2f}x")
        mixed_vs_sequential(folder, bpe, images, args, loads)
        print(f"load average during the runs: {min(loads):.2f}-{max(loads):.2f}")


def mixed_vs_sequential(folder, bpe, images, args, loads):
    """Half the images captioned with one prompt file (length 16), half asked a question with another (VQA,
    length 32): OFAPredictor.mixed in batches of the largest batch size, against caption() then answer()."""
    from ofa_prompt import from_pretrained
    from ofa_prompt.prompt_file import export_prompts

    files = {}
    for task, length in (("caption", 16), ("vqa_gen", 32)):
        save_model(os.path.join(folder, f"{task}.pt"), task, args.image, bpe, length)
        files[task] = os.path.join(folder, f"{task}.safetensors")
        export_prompts(os.path.join(folder, f"{task}.pt"), files[task])
    question = "what color is the shape?"
    half = len(images) // 2
    requests = ([{"prompts": files["caption"], "image": im} for im in images[:half]]
                + [{"prompts": files["vqa_gen"], "image": im, "question": question} for im in images[half:]])
    batch = max(args.batch_sizes)
    model = from_pretrained(os.path.join(folder, "model.pt"), bpe_dir=bpe, batch_size=batch)

    def sequential():
        model.load_prompts(files["caption"])
        model.caption(images[:half], beam=args.beam)
        model.load_prompts(files["vqa_gen"])
        model.answer(images[half:], question, beam=args.beam)

    model.mixed(requests[:2], beam=args.beam)  # warm-up
    sequential()
    mixed, one_by_one = [], []
    for _ in range(args.repeats):  # interleaved
        start = time.perf_counter()
        model.mixed(requests, beam=args.beam)
        mixed.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        sequential()
        one_by_one.append(len(images) / (time.perf_counter() - start))
        loads.append(os.getloadavg()[0])
    m, q = statistics.median(mixed), statistics.median(one_by_one)
    print(f"mixed caption + VQA, batch {batch}: one mixed batch {m:6.2f} images/s ({min(mixed):.2f}-{max(mixed):.2f}), "
          f"the tasks one after another {q:6.2f} ({min(one_by_one):.2f}-{max(one_by_one):.2f}): mixed / sequential "
          f"{m / q:.2f}x (generation lengths are the tasks' own: 16 tokens)")


if __name__ == "__main__":
    main()
