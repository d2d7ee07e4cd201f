"""Cost of prompt tuning against finetuning, side by side on the same batches.

    python benchmarks/performance.py [--sizes base large tiny demo] [--steps 5] [--repetitions 3] [--scaling]

For each model size: training-step time (forward + backward + Adam step, median of --steps after one
warm-up) and peak memory growth of a step (peak RSS during the steps minus RSS before them, each
configuration in a fresh process, peak reset after a warm-up step) for finetuning, prompt tuning (prompt
length 64 on encoder and decoder), prompt tuning with --image-feature-cache once every image is cached
(epochs after the first) and in its first epoch; beam-5 generation time with and without prompts; the
trainable fraction. Configurations run in turn, --repetitions times; medians, min-max and the paired
ratios are printed with the load average. --scaling adds prompt lengths 16-256 and batch sizes 1 and 16.
`base` is ofa_base at 480 px, batch 2, and `large` ofa_large at 480 px, batch 1 (the sizes users train; OFA's
59457-token vocabulary), `tiny` ofa_tiny (256 px, batch 4), `demo` the micro model of the demo.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import ratio, run, set_threads, shown, timed_beam, timed_steps  # noqa: E402

SIZES = {  # base and large at 480 px are what users train (random weights: only the shapes matter)
    "base": dict(arch="ofa_prompt_base", image=480, batch=2, vocab=59457, src=24, tgt=16),
    "large": dict(arch="ofa_prompt_large", image=480, batch=1, vocab=59457, src=24, tgt=16),
    "tiny": dict(arch="ofa_prompt_tiny", image=256, batch=4, vocab=59457, src=24, tgt=16),
    "demo": dict(arch="ofa_prompt_tiny", image=64, batch=8, vocab=2000, src=16, tgt=12, encoder_layers=2,
                 decoder_layers=2, encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128,
                 decoder_ffn_embed_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
                 resnet_type="resnet18"),
}


def build(size, prompt, length=64, batch_size=None):
    # first, before fairseq: the plugin's load() imports fairseq with its import notices silenced and the root
    # logger's level kept (fairseq's import sets it to DEBUG)
    import ofa_prompt

    ofa_prompt.load()  # registers the plugin with fairseq
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


def train_steps(size, prompt, steps, cache, length, batch_size, queue):
    """Median step time and peak memory growth of `steps` training steps (after a warm-up), then the beam-5
    generation time, in this (fresh) process. cache: None, "hit" (every image's features cached: epochs after
    the first) or "miss" (a new cache every step: the first epoch, paying for storing the features)."""
    from fairseq.sequence_generator import SequenceGenerator

    from ofa_prompt.models.image_cache import ImageFeatureCache

    set_threads()
    model, d, batch = build(size, prompt, length, batch_size)
    if cache is not None:
        model.encoder.image_cache = ImageFeatureCache(4096)
        batch["image_keys"] = torch.arange(2 * len(batch["src_tokens"])).view(-1, 2)

    def fresh_cache():
        model.encoder.image_cache = ImageFeatureCache(4096)

    out = timed_steps(model, batch, steps, fresh_cache if cache == "miss" else None)
    if cache is None:
        model.eval()
        # fixed output length so that every run decodes the same number of steps
        gen = SequenceGenerator([model], d, beam_size=5, max_len_a=0, max_len_b=12, min_len=12)
        sample = {"net_input": {k: v for k, v in batch.items() if k != "prev_output_tokens"}}
        out.update(timed_beam(lambda: gen.generate([model], sample), steps))
    queue.put(out)


def interleaved(configs, repetitions, steps):
    """{name: [result of each repetition]}, the configurations run in turn, each in a fresh process."""
    results, loads = {name: [] for name in configs}, []
    for r in range(repetitions):
        for name, args in configs.items():
            results[name].append(run(train_steps, *args[:2], steps, *args[2:]))
            loads.append(os.getloadavg()[0])
        print(f"  repetition {r + 1}/{repetitions} done", file=sys.stderr, flush=True)
    return results, loads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["base"], choices=list(SIZES))
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
