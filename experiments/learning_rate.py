"""Learning rate against backbone size: one method's test score over several learning rates on each size,
the backbones pretrained to the same validation loss as in scale.py. The scale study tunes every size with the
learning rates chosen on the micro backbone (common.METHODS); this says whether they suit the larger ones.

    python experiments/learning_rate.py [--sizes micro medium] [--task caption] [--method finetune]
                                        [--lrs 1e-4 2e-4 5e-4] [--seeds 1 2 3] [--quick]

A run at the method's own learning rate is the scale study's run of the same size, task and seed (shared
through the run store).
"""
import json
import os

from baselines import DESCRIPTION, baseline
from common import (
    METHODS,
    SIZES,
    TASKS,
    Series,
    best_point,
    cli,
    command_line,
    execute_all,
    log,
    lr_run,
    mean_std,
    method_lr,
    original_args,
    plot,
    pm,
    pretraining,
    remade_command_line,
    save_results,
    settings,
)


def best_learning_rates(per_seed):
    """{size: (learning rate, mean score)}, each size's best rate, of per_seed {"<size>/<lr>": [score, ...]}
    (results.json)."""
    means = {}
    for key, scores in per_seed.items():
        size, lr = key.split("/")
        means.setdefault(size, {})[float(lr)] = mean_std(scores)[0]
    return {size: max(by_lr.items(), key=lambda item: item[1]) for size, by_lr in means.items()}


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["micro", "medium"], choices=list(SIZES))
    ap.add_argument("--task", default="caption", choices=list(TASKS))
    ap.add_argument("--method", default="finetune", choices=list(METHODS))
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4, 5e-4], help="learning rates to try")
    ap.add_argument("--from-results", action="store_true",
                    help="remake table and plot from the output folder's results.json, without training")
    a = ap.parse_args(argv)
    if any(not lr > 0 for lr in a.lrs):
        ap.error(f"--lrs must be positive, got {a.lrs}")
    a.sizes = sorted(dict.fromkeys(a.sizes), key=list(SIZES).index)
    lrs = sorted(set(a.lrs))
    updates, every, seeds, out = settings(a, "learning_rate")
    metric = TASKS[a.task]["metric"]
    if a.from_results:  # the stored table's rows (updates to best) and per-seed scores, the run's own settings
        with open(os.path.join(out, "results.json")) as f:
            stored = json.load(f)
        a = original_args(ap, out, ["--out", out, "--from-results"])
        lrs, seeds, per_seed, matched = sorted(set(a.lrs)), stored["seeds"], stored["per_seed"], stored["matched_loss"]
        a.sizes = sorted(dict.fromkeys(a.sizes), key=list(SIZES).index)
        rows = [r for r in stored["rows"] if not r[1].startswith("trivial baseline")]
    else:
        matched = pretraining(a.quick, a.sizes[-1]).checkpoints[-1][1]
        log(f"backbones matched at the {a.sizes[-1]} backbone's final validation loss {matched:.4f}")
        runs = {(size, lr, s): lr_run(a.task, a.method, lr, updates, every, s, size, matched)
                for size in a.sizes for lr in lrs for s in seeds}
        results = execute_all(list(runs.values()), a.quick, a.workers)
        rows, per_seed = [], {}
        for size in a.sizes:
            for lr in lrs:
                rs = [results[runs[size, lr, s]] for s in seeds]
                scores = [r["score"] for r in rs]
                best = [best_point(r["curve"]) for r in rs]
                per_seed[f"{size}/{lr:g}"] = scores
                rows.append([size, f"{lr:g}" + (" (default)" if lr == method_lr(a.method) else ""), pm(scores),
                             f"{min(scores):.4f} .. {max(scores):.4f}", pm([b[0] for b in best], 0)])
    for size, (lr, score) in best_learning_rates(per_seed).items():
        log(f"{size}: best learning rate {lr:g} ({metric} {score:.4f})")
    base = baseline(a.task, "test", a.quick)
    save_results(out, f"Learning rate against size: {a.method} on {a.task}",
                 [["-", f"trivial baseline: {DESCRIPTION[a.task]}", f"{base:.4f}", "-", "-"], *rows],
                 ["size", "learning rate", f"{metric} (mean ± sd)", "seed range", "updates to best"],
                 f"{a.method} on {a.task}, {updates} updates per run, validated every {every}, test split on the best "
                 f"checkpoint (beam 5); seeds {seeds}. Backbones: each size's first pretraining checkpoint at or below "
                 f"validation loss {matched:.4f} on the pretraining mix (the {a.sizes[-1]} backbone's final one), as "
                 "in "
                 f"scale.py. The default learning rate ({method_lr(a.method):g}) is common.METHODS', chosen on the "
                 "micro backbone. The trivial baseline (experiments/baselines.py) is scored on the same test split.",
                 remade_command_line(out, "learning_rate.py", argv) if a.from_results
                 else command_line("learning_rate.py", argv),
                 extra=dict(per_seed=per_seed, seeds=seeds, task=a.task, method=a.method, matched_loss=matched,
                            baseline=base))
    plot(os.path.join(out, "learning_rate.png"), f"{a.method} on {a.task}: learning rate by size",
         {size: Series(lrs, [per_seed[f"{size}/{lr:g}"] for lr in lrs]) for size in a.sizes},
         "learning rate", f"test {metric}", logx=True, baseline=base)
    return per_seed


if __name__ == "__main__":
    main()
