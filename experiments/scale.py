"""The paper's central claim, that prompt tuning closes the gap to finetuning as the model grows, on
backbones of several sizes: each parameter-efficient method's share of finetuning's test score, per task and
seed, against the backbone's parameter count.

    python experiments/scale.py [--sizes micro small medium] [--tasks ...] [--pretraining matched|final]
                                [--seeds 1 2 3] [--quick]

Every size is pretrained once on the synthetic pretraining mix the demo's way (common.SIZES), validating
every 50 updates, and cached. With the same number of updates, larger backbones end less well pretrained
(a higher validation loss on the mix), which would confound size with pretraining; so by default
(--pretraining matched) every size is tuned from its first checkpoint whose validation loss is at or below
the final loss of the largest size: backbones pretrained equally well, not equally long. --pretraining
final tunes every size from its last checkpoint (the micro one is then the demo's backbone), as
compare_methods.py does, sharing its runs through the run store.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, SIZES, TASKS, Series, cli, command_line, execute_all, log,  # noqa: E402
                    mean_std, method_run, plot_grid, pm, pretraining, save_results, settings)
from compare_methods import method_runs, shares  # noqa: E402


def backbone_params(results, size) -> int:
    """The backbone's parameter count: the smallest total of the size's runs (prompts and adapters add theirs)."""
    return min(r["total"] for run, r in results.items() if run.size == size)


def share_table(results, sizes, tasks, methods, seeds, updates, every, matched_loss=None):
    """Rows (size, parameters, task, method, score, share) and {method: {size: [share of each task and seed]}}."""
    rows, pooled = [], {m: {} for m in methods if m != "finetune"}
    for size in sizes:
        for task in tasks:
            for method in methods:
                rs = [results[method_run(task, method, updates, every, s, size, matched_loss)] for s in seeds]
                share = shares(results, task, method, seeds, size, updates, every, matched_loss)
                if method != "finetune":
                    pooled[method].setdefault(size, []).extend(share)
                rows.append([size, f"{backbone_params(results, size):,}", task, method, pm([r["score"] for r in rs]),
                             pm(share, 2) if method != "finetune" else "1"])
    return rows, pooled


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--pretraining", choices=["matched", "final"], default="matched",
                    help="tune each size from its checkpoint pretrained to the largest size's final validation loss "
                         "(matched, the default) or from its last checkpoint (final)")
    a = ap.parse_args(argv)
    if "finetune" not in a.methods:
        ap.error("--methods must include finetune: every share is of finetuning's score")
    a.sizes = sorted(dict.fromkeys(a.sizes), key=list(SIZES).index)  # smallest first
    updates, every, seeds, out = settings(a, "scale")
    matched = None
    if a.pretraining == "matched":
        matched = pretraining(a.quick, a.sizes[-1]).checkpoints[-1][1]
        log(f"backbones matched at the {a.sizes[-1]} backbone's final validation loss {matched:.4f}")
    runs = [r for size in a.sizes for r in method_runs(a.tasks, a.methods, seeds, updates, every, size, matched)]
    log(f"{len(runs)} runs: sizes {a.sizes}, seeds {seeds}, {updates} updates each")
    results = execute_all(runs, a.quick, a.workers)
    rows, pooled = share_table(results, a.sizes, a.tasks, a.methods, seeds, updates, every, matched)
    backbones = {s: (pretraining(a.quick, s, matched).matched(matched)[:2] if matched is not None else None)
                 for s in a.sizes}
    params = {size: backbone_params(results, size) for size in a.sizes}
    def change(m):
        first, last = pooled[m][a.sizes[0]], pooled[m][a.sizes[-1]]
        return f"{mean_std(last)[0] - mean_std(first)[0]:+.2f}" if first and last else "-"

    trend = [[m, *(pm(pooled[m][s], 2) for s in a.sizes), change(m)] for m in pooled]
    if matched is None:
        how = "each the last checkpoint of its pretraining on the synthetic pretraining mix"
    else:
        how = (f"each the first checkpoint of its pretraining on the synthetic pretraining mix whose validation loss "
               f"is at or below {matched:.4f}, the {a.sizes[-1]} backbone's final one (" + ", ".join(
                   f"{s}: {u} updates, loss {loss:.4f}" for s, (u, loss) in backbones.items()) + ")")
    save_results(out, "Scale: share of finetuning's score against backbone size", rows,
                 ["size", "parameters", "task", "method", "test score (mean ± sd)", "share of finetuning"],
                 f"Backbones {', '.join(f'{s} ({params[s]:,} parameters)' for s in a.sizes)}, {how}; every method tuned {updates} updates per run, validated every {every}, "
                 f"test split on the best checkpoint (beam 5); seeds {seeds}, shares seed by seed.\n\n"
                 "Share of finetuning's score over all tasks and seeds (mean ± sd), and its change from the smallest "
                 "to the largest size:\n\n| method | " + " | ".join(a.sizes) + " | change |\n|" + "---|" * (len(a.sizes) + 2)
                 + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in trend),
                 command_line("scale.py", argv),
                 extra=dict(pooled=pooled, params=params, seeds=seeds, pretraining=a.pretraining, backbones=backbones,
                            per_run={run.name: res["score"] for run, res in results.items()}))
    xs = [params[s] for s in a.sizes]
    panels = [dict(title=f"{task}: share of finetuning's {TASKS[task]['metric']}", xlabel="backbone parameters",
                   ylabel=f"{TASKS[task]['metric']} / finetuning's", logx=True,
                   series={m: Series(xs, [shares(results, task, m, seeds, s, updates, every, matched) for s in a.sizes])
                           for m in a.methods if m != "finetune"})
              for task in a.tasks]
    panels.append(dict(title="all tasks pooled", xlabel="backbone parameters", ylabel="score / finetuning's",
                       logx=True, series={m: Series(xs, [pooled[m][s] for s in a.sizes]) for m in pooled}))
    plot_grid(os.path.join(out, "scale.png"), panels)
    panels = [dict(title=f"{task} (absolute)", xlabel="backbone parameters", ylabel=TASKS[task]["metric"], logx=True,
                   series={m: Series(xs, [[results[method_run(task, m, updates, every, sd, s, matched)]["score"]
                                           for sd in seeds] for s in a.sizes]) for m in a.methods})
              for task in a.tasks]
    plot_grid(os.path.join(out, "scores.png"), panels)
    return pooled


if __name__ == "__main__":
    main()
