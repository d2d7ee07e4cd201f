"""Cost of prompt tuning against finetuning, side by side on the same batches.

    python benchmarks/performance.py [--sizes tiny demo] [--steps 5] [--quick]

For each model size: training-step time (forward + backward + Adam step, median of --steps after one
warm-up) and peak memory growth of a step (peak RSS during the steps minus RSS before them, each
configuration in a fresh process, peak reset after a warm-up step) for finetuning and for prompt tuning (prompt length 64 on encoder and
decoder); beam-5 generation time with and without prompts; the trainable fraction.
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
PROMPT = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=64, decoder_prompt_length=64)


def build(size, prompt):
    import ofa_prompt  # noqa: F401
    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from ofa_prompt.models.ofa import OFAModel

    spec = dict(SIZES[size])
    shape = {k: spec.pop(k) for k in ("image", "batch", "vocab", "src", "tgt")}
    args = argparse.Namespace(**spec, **(PROMPT if prompt else {}))
    ARCH_CONFIG_REGISTRY[args.arch](args)
    d = Dictionary()
    for i in range(shape["vocab"] - len(d)):
        d.add_symbol(str(i))
    torch.manual_seed(0)
    model = OFAModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    g = torch.Generator().manual_seed(0)
    b = shape["batch"]
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


def train_steps(size, prompt, steps, queue):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model, _, batch = build(size, prompt)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    target = batch["prev_output_tokens"]

    def step():
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
    queue.put(dict(step_ms=1000 * statistics.median(times), mem_growth_mb=peak - before,
                   trainable=trainable, total=total, adam_tensors=len(opt.state)))


@torch.no_grad()
def generate(size, prompt, steps, queue):
    from fairseq.sequence_generator import SequenceGenerator

    model, d, batch = build(size, prompt)
    model.eval()
    # fixed output length so that both runs decode the same number of steps
    gen = SequenceGenerator([model], d, beam_size=5, max_len_a=0, max_len_b=12, min_len=12)
    sample = {"net_input": {k: v for k, v in batch.items() if k != "prev_output_tokens"}}
    gen.generate([model], sample)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        gen.generate([model], sample)
        times.append(time.perf_counter() - t)
    queue.put(dict(beam5_ms=1000 * statistics.median(times)))


def run(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    results = {}
    print("| model | method | step (ms) | vs finetune | peak memory growth (MB) | trainable | beam-5 generate (ms) |")
    print("|---|---|---|---|---|---|---|")
    for size in a.sizes:
        ft = {**run(train_steps, size, False, a.steps), **run(generate, size, False, a.steps)}
        pt = {**run(train_steps, size, True, a.steps), **run(generate, size, True, a.steps)}
        results[size] = {"finetune": ft, "prompt": pt}
        for name, r in (("finetune", ft), ("prompt (64)", pt)):
            print(f"| {size} | {name} | {r['step_ms']:.0f} | {r['step_ms'] / ft['step_ms']:.2f}x | "
                  f"{r['mem_growth_mb']:.0f} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
                  f"{r['beam5_ms']:.0f} ({r['beam5_ms'] / ft['beam5_ms']:.2f}x) |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
