"""Where a training step's memory goes, this project against the official OFA code: the peak of live tensors
in one step, by category, from torch's memory profiler (not RSS, which also counts the allocator's slack).

    python benchmarks/memory_profile.py [--ofa-repo PATH] [--method finetune|prompt] [--top 8]

The configuration, the weights and the batch are benchmarks/official_side_by_side.py's (ofa_tiny, 256 px,
batch 4, OFA's vocabulary size; prompts of 64 for --method prompt). Each side runs in a fresh process: a
warm-up step (Adam's state allocated), then one step under torch.profiler with profile_memory; the live
bytes over the step are split into torch's categories (parameters, optimizer state, gradients, activations,
temporaries, ...) by torch.profiler._memory_profiler, a private module of torch (2.1 and later) that
torch.profiler's own export_memory_timeline uses. Printed: the peak over the step and each category at that
moment, ours and official side by side, then the operators that allocated the most memory on each side.
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_side_by_side as sbs  # noqa: E402
from measure import reports_errors, run, training_step  # noqa: E402


def profiled_step(model, batch, top):
    """{category: MB} at the step's peak of live tensor bytes, the peak, and the `top` allocating operators."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    step = training_step(model, batch)
    step()  # warm-up: Adam's state allocated
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline("cpu")  # [time][category column] live bytes
    columns = {("unknown" if c is None else c.name.lower()): i for c, i in _CATEGORY_TO_INDEX.items()}
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    by_op = sorted(((e.key, e.cpu_memory_usage) for e in prof.key_averages() if e.cpu_memory_usage > 0),
                   key=lambda kv: -kv[1])[:top]
    return dict(peak_mb=totals[at] / 2 ** 20, start_mb=totals[0] / 2 ** 20,
                at_peak={name: sizes[at][i] / 2 ** 20 for name, i in columns.items()},
                at_start={name: sizes[0][i] / 2 ** 20 for name, i in columns.items()},
                ops=[(k, v / 2 ** 20) for k, v in by_op])


@reports_errors
def official_profile(ofa_dir, weights, prompt, top, queue):
    sbs.set_threads()
    model = sbs.official_model(ofa_dir, prompt, weights)[0]
    queue.put(profiled_step(model, sbs.make_batch(), top))


@reports_errors
def our_profile(weights, prompt, top, queue):
    sbs.set_threads()
    model = sbs.our_model(prompt, weights)[0]
    queue.put(profiled_step(model, sbs.make_batch(), top))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ofa-repo", default=os.environ.get("OFA_REPO", sbs.DEFAULT_OFA_REPO))
    ap.add_argument("--method", choices=["finetune", "prompt"], default="finetune")
    ap.add_argument("--top", type=int, default=8, help="operators listed per side")
    a = ap.parse_args()
    if not os.path.isdir(a.ofa_repo):
        raise SystemExit(f"OFA repository not found at {a.ofa_repo}: give it with --ofa-repo PATH or OFA_REPO")
    workdir = tempfile.mkdtemp(prefix="ofa_memory_")
    prompt = a.method == "prompt"
    try:
        ofa_dir = os.path.join(workdir, "ofa")
        os.makedirs(ofa_dir)
        commit = sbs.extract_ofa(a.ofa_repo, ofa_dir)
        weights = run(sbs.official_setup, ofa_dir, workdir)["weights"]
        sides = {"official": run(official_profile, ofa_dir, weights, prompt, a.top),
                 "ours": run(our_profile, weights, prompt, a.top)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{a.method} step, ofa_tiny, batch {sbs.SHAPE['batch']}, {sbs.SHAPE['image']} px, official OFA {commit[:7]}: "
          "live tensor memory (MB) at the start of the step and at its peak, by torch's categories")
    print("\n| category | official, start | official, at peak | ours, start | ours, at peak "
          "| ours - official at peak |")
    print("|---|---|---|---|---|---|")
    off, ours = sides["official"], sides["ours"]
    for name in off["at_peak"]:
        o, u = off["at_peak"][name], ours["at_peak"][name]
        if max(o, u, off["at_start"][name], ours["at_start"][name]) >= 0.05:
            print(f"| {name} | {off['at_start'][name]:.1f} | {o:.1f} | {ours['at_start'][name]:.1f} | {u:.1f} | "
                  f"{u - o:+.1f} |")
    print(f"| **total** | {off['start_mb']:.1f} | {off['peak_mb']:.1f} | {ours['start_mb']:.1f} "
          f"| {ours['peak_mb']:.1f} | {ours['peak_mb'] - off['peak_mb']:+.1f} |")
    print(f"\ngrowth over the step (peak - start): official {off['peak_mb'] - off['start_mb']:.1f} MB, "
          f"ours {ours['peak_mb'] - ours['start_mb']:.1f} MB")
    for side in ("official", "ours"):
        print(f"\n{side}: operators allocating the most (MB over the step)")
        for k, v in sides[side]["ops"]:
            print(f"  {v:8.1f}  {k}")


if __name__ == "__main__":
    main()
