"""Cost of prompt tuning against finetuning, side by side on the same batches.

    python benchmarks/performance.py [--sizes tiny demo] [--steps 5] [--repetitions 3] [--scaling]

For each model size: training-step time (forward + backward + Adam step, median of --steps after one
warm-up) and peak memory growth of a step (peak RSS during the steps minus RSS before them, each
configuration in a fresh process, peak reset after a warm-up step) for finetuning, prompt tuning (prompt
length 64 on encoder and decoder), prompt tuning with --image-feature-cache once every image is cached
(epochs after the first) and in its first epoch; beam-5 generation time with and without prompts; the
trainable fraction. Configurations run in turn, --repetitions times; medians, min-max and the paired
ratios are printed with the load average. --scaling adds prompt lengths 16-256 and batch sizes 1 and 16.
`tiny` is ofa_tiny (256 px, batch 4, OFA's 59457-token vocabulary); `demo` the micro model of the demo.
"""
import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {
    "tiny": dict(arch="ofa_prompt_tiny", image=256, batch=4, vocab=59457, src=24, tgt=16),
    "demo": dict(arch="ofa_prompt_tiny", image=64, batch=8, vocab=2000, src=16, tgt=12, encoder_layers=2,
                 decoder_layers=2, encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128,
                 decoder_ffn_embed_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, resnet_type="resnet18"),
}


def build(size, prompt, length=64, batch_size=None):
    import ofa_prompt  # noqa: F401
    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from ofa_prompt.models.ofa import OFAModel

    spec = dict(SIZES[size])
    shape = {k: spec.pop(k) for k in ("image", "batch", "vocab", "src", "tgt")}
    prompts = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=length, decoder_prompt_length=length)
    args = argparse.Namespace(**spec, **(prompts if prompt else {}))
    ARCH_CONFIG_REGISTRY[args.arch](args)
    d = Dictionary()
    for i in range(shape["vocab"] - len(d)):
        d.add_symbol(str(i))
    torch.manual_seed(0)
    model = OFAModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    g = torch.Generator().manual_seed(0)
    b = batch_size or shape["batch"]
    batch = dict(src_tokens=torch.randint(4, shape["vocab"], (b, shape["src"]), generator=g),
                 src_lengths=torch.full((b,), shape["src"]),
                 prev_output_tokens=torch.randint(4, shape["vocab"], (b, shape["tgt"]), generator=g),
                 patch_images=torch.rand(b, 3, shape["image"], shape["image"], generator=g) * 2 - 1,
                 patch_masks=torch.ones(b, dtype=torch.bool))
    return model, d, batch


def status_mb(field):
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak resident set size
        f.write("5")


def train_steps(size, prompt, steps, cache, length, batch_size, queue):
    """Median step time and peak memory growth of `steps` training steps (after a warm-up), then the beam-5
    generation time, in this (fresh) process. cache: None, "hit" (every image's features cached: epochs after
    the first) or "miss" (a new cache every step: the first epoch, paying for storing the features)."""
    from ofa_prompt.models.image_cache import ImageFeatureCache

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model, d, batch = build(size, prompt, length, batch_size)
    if cache is not None:
        model.encoder.image_cache = ImageFeatureCache(4096)
        batch["image_keys"] = torch.arange(2 * len(batch["src_tokens"])).view(-1, 2)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = batch["prev_output_tokens"]

    def step():
        if cache == "miss":
            model.encoder.image_cache = ImageFeatureCache(4096)
        logits, _ = model(**batch)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state allocated, caches built
    reset_peak_rss()
    before = status_mb("VmRSS")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = status_mb("VmHWM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    out = dict(step_ms=1000 * statistics.median(times), mem_growth_mb=peak - before, trainable=trainable, total=total)
    if cache is None:
        out["beam5_ms"] = beam_ms(model, d, batch, steps)
    queue.put(out)


@torch.no_grad()
def beam_ms(model, d, batch, steps):
    from fairseq.sequence_generator import SequenceGenerator

    model.eval()
    # fixed output length so that every run decodes the same number of steps
    gen = SequenceGenerator([model], d, beam_size=5, max_len_a=0, max_len_b=12, min_len=12)
    sample = {"net_input": {k: v for k, v in batch.items() if k != "prev_output_tokens"}}
    gen.generate([model], sample)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        gen.generate([model], sample)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def run(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def interleaved(configs, repetitions, steps):
    """{name: [result of each repetition]}, the configurations run in turn, each in a fresh process."""
    results, loads = {name: [] for name in configs}, []
    for r in range(repetitions):
        for name, args in configs.items():
            results[name].append(run(train_steps, *args[:2], steps, *args[2:]))
            loads.append(os.getloadavg()[0])
        print(f"  repetition {r + 1}/{repetitions} done", file=sys.stderr, flush=True)
    return results, loads


def median(values):
    return statistics.median(values), min(values), max(values)


def shown(values, unit=""):
    m, lo, hi = median(values)
    return f"{m:.0f}{unit} ({lo:.0f}-{hi:.0f})"


def ratio(a, b):
    """Median of the paired ratios a_i / b_i, with their range."""
    r = [x / y for x, y in zip(a, b)]
    m, lo, hi = median(r)
    return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions of every configuration")
    ap.add_argument("--scaling", action="store_true", help="also prompt lengths 16-256 and batch sizes 1-16 (tiny)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    out = {}
    for size in a.sizes:
        batch = SIZES[size]["batch"]
        configs = {"finetune": (size, False, None, 64, batch), "prompt (64)": (size, True, None, 64, batch),
                   "prompt (64), cached features": (size, True, "hit", 64, batch),
                   "prompt (64), first epoch of the cache": (size, True, "miss", 64, batch)}
        res, loads = interleaved(configs, a.repetitions, a.steps)
        out[size] = res
        ft = [r["step_ms"] for r in res["finetune"]]
        pt = [r["step_ms"] for r in res["prompt (64)"]]
        print(f"\n{size}: medians of {a.repetitions} interleaved repetitions (min-max), each the median of "
              f"{a.steps} steps; load average {min(loads):.2f}-{max(loads):.2f}")
        print("| method | step (ms) | vs finetune | vs prompt | peak memory growth (MB) | trainable | beam-5 (ms) |")
        print("|---|---|---|---|---|---|---|")
        for name, rows in res.items():
            step = [r["step_ms"] for r in rows]
            beam = [r["beam5_ms"] for r in rows] if "beam5_ms" in rows[0] else None
            t = rows[0]
            print(f"| {name} | {shown(step)} | {ratio(step, ft)} | {ratio(step, pt)} | "
                  f"{shown([r['mem_growth_mb'] for r in rows])} | {t['trainable']:,} "
                  f"({100 * t['trainable'] / t['total']:.2f}%) | "
                  f"{shown(beam) + ' ' + ratio(beam, [r['beam5_ms'] for r in res['finetune']]) if beam else '-'} |")
    if a.scaling:
        configs = {f"length {n}, batch 4": ("tiny", True, None, n, 4) for n in (16, 64, 128, 256)}
        configs.update({f"length 64, batch {b}": ("tiny", True, None, 64, b) for b in (1, 16)})
        res, loads = interleaved(configs, a.repetitions, a.steps)
        out["scaling"] = res
        base = res["length 64, batch 4"]
        print(f"\nhow cost grows (tiny, prompt tuning): load average {min(loads):.2f}-{max(loads):.2f}")
        print("| configuration | step (ms) | vs length 64 | beam-5 (ms) | vs length 64 |")
        print("|---|---|---|---|---|")
        for name, rows in res.items():
            step, beam = [r["step_ms"] for r in rows], [r["beam5_ms"] for r in rows]
            print(f"| {name} | {shown(step)} | {ratio(step, [r['step_ms'] for r in base])} | {shown(beam)} | "
                  f"{ratio(beam, [r['beam5_ms'] for r in base])} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
