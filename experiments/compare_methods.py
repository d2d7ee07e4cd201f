"""The paper's Tables 1-2 in miniature: finetuning, prompt tuning, adapters and BitFit on one backbone, for
the synthetic benchmark's four downstream tasks, each with several seeds.

    python experiments/compare_methods.py [--size micro] [--tasks caption vqa ...] [--seeds 1 2 3] [--lr-grid]

Each run validates by generation every --every updates (OFA's --eval-cider / --eval-acc, greedy) and keeps
checkpoint_best.pt; the test split is scored on that checkpoint with fairseq-generate (beam 5). Each method trains
at its rate in common.METHODS, or with --lr-grid at every rate of its common.LR_GRIDS grid, and each task's row
takes the rate with the best mean validation score over the seeds (chosen on validation, reported on test).
"""
import json
import os

from baselines import DESCRIPTION, baseline
from common import (
    LR_GRIDS,
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
    plot_grid,
    pm,
    remade_command_line,
    save_results,
    settings,
    shares_of_finetuning,
    verdict,
)


def learning_rates(method, lr_grid=False):
    """The rates `method` trains at: its common.METHODS one, or with `lr_grid` its common.LR_GRIDS grid."""
    return LR_GRIDS[method] if lr_grid else (method_lr(method),)


def method_runs(tasks, methods, seeds, updates, every, size="micro", matched_loss=None, lr_grid=False):
    return [lr_run(task, method, lr, updates, every, seed, size, matched_loss)
            for task in tasks for method in methods for lr in learning_rates(method, lr_grid) for seed in seeds]


def chosen_lr(valid_by_lr):
    """The learning rate whose seeds have the best mean validation score, of {lr: [best validation score per
    seed]}; the smaller rate on a tie."""
    return max(sorted(valid_by_lr), key=lambda lr: mean_std(valid_by_lr[lr])[0])


def per_seed_values(results, tasks, methods, seeds, updates, every, size="micro", lr_grid=False, extra_seeds=()):
    """{task/method: the per-seed values behind a table row} of the stored runs, at the rate chosen on the
    validation scores of `seeds` (with `lr_grid`, the grid's best validation and test scores per rate too), then
    `extra_seeds` run at the chosen rate only."""
    per_seed = {}
    for task in tasks:
        for method in methods:
            lrs = learning_rates(method, lr_grid)
            by_lr = {lr: [results[lr_run(task, method, lr, updates, every, s, size)] for s in seeds] for lr in lrs}
            valid = {lr: [best_point(r["curve"])[1] for r in rs] for lr, rs in by_lr.items()}
            lr = chosen_lr(valid)
            rs = by_lr[lr] + [results[lr_run(task, method, lr, updates, every, s, size)] for s in extra_seeds]
            best = [best_point(r["curve"]) for r in rs]
            per_seed[f"{task}/{method}"] = dict(
                score=[r["score"] for r in rs], best_valid=[b[1] for b in best], updates_to_best=[b[0] for b in best],
                seconds=[r["seconds"] for r in rs], trainable=f"{rs[0]['trained']:,} "
                                                              f"({100 * rs[0]['trained'] / rs[0]['total']:.2f}%)",
                lr=lr, grid={f"{x:g}": dict(best_valid=valid[x], score=[r["score"] for r in by_lr[x]]) for x in lrs})
    return per_seed


def rate_column(v, method):
    """The table's learning rate cell: the rate (runs made before the grid existed trained at METHODS' one) and,
    for a grid, each rate's mean best validation score, the chosen one marked when it is at the grid's edge."""
    lr = v.get("lr", method_lr(method))
    grid = v.get("grid", {})
    if len(grid) < 2:
        return f"{lr:g}"
    rates = sorted(grid, key=float)
    edge = " (the grid's edge)" if f"{lr:g}" in (rates[0], rates[-1]) else ""
    return f"{lr:g}{edge}; validation " + ", ".join(f"{x}: {mean_std(grid[x]['best_valid'])[0]:.4f}" for x in rates)


def summarize(per_seed, tasks, methods, baselines, updates):
    """Rows of the comparison table from the per-seed values, each task's trivial baseline first; shares of
    finetuning seed by seed (stored into per_seed), Welch's t-test of each method against finetuning, and how many
    seeds had their best validation at the last update (the budget may have stopped them still improving)."""
    rows = []
    for task in tasks:
        metric = TASKS[task]["metric"]
        rows.append([task, f"trivial baseline: {DESCRIPTION[task]}", metric, f"{baselines[task]:.4f}", "0", "-", "-",
                     "0", "-", "-", "-", "-", "-"])
        ft = per_seed[f"{task}/finetune"]["score"] if "finetune" in methods else None
        for method in methods:
            v = per_seed[f"{task}/{method}"]
            scores = v["score"]
            if ft is not None:
                v["share"] = shares_of_finetuning(scores, ft, baselines[task])
            test = verdict(scores, ft, ("above finetuning", "below finetuning")) if ft and method != "finetune" else "-"
            rows.append([task, method, metric, pm(scores), pm(v["share"], 2) if ft else "-", test,
                         f"{min(scores):.4f} .. {max(scores):.4f}", v["trainable"], pm(v["best_valid"]),
                         pm(v["updates_to_best"], 0), f"{mean_std(v['seconds'])[0]:.0f}", rate_column(v, method),
                         f"{sum(u >= updates for u in v['updates_to_best'])}/{len(scores)}"])
    return rows


HEADER = ["task", "method", "metric", "test score (mean ± sd)", "share of finetuning from the baseline",
          "against finetuning (Welch's t-test, 0.05)", "seed range", "trainable parameters", "best validation score",
          "updates to best", "train seconds", "learning rate", "seeds best at the last update"]


def plot_methods(path, tasks, methods, per_seed, title, baselines):
    """One panel per task (its own metric), a bar per method with the seeds' standard deviation and the task's
    trivial baseline as a line."""
    panels = [dict(title=f"{task} ({title})", xlabel="method", ylabel=TASKS[task]["metric"], kind="bar",
                   xticks=[""], series={m: Series([0], [per_seed[f"{task}/{m}"]["score"]]) for m in methods},
                   baseline=baselines[task])
              for task in tasks]
    plot_grid(path, panels)


def stored_per_seed(out: str):
    """The per-seed values of an earlier results.json (tables and plots remade without training); its rows give
    the trainable parameters where the per-seed values lack them."""
    with open(os.path.join(out, "results.json")) as f:
        stored = json.load(f)
    missing = [key for key, v in stored["per_seed"].items() if "trainable" not in v]
    if missing:
        column = stored["header"].index("trainable parameters")
        trainable = {f"{r[0]}/{r[1]}": r[column] for r in stored["rows"]}
        for key in missing:
            stored["per_seed"][key]["trainable"] = trainable[key]
    return stored


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--lr-grid", action="store_true",
                    help="train each method at every rate of its common.LR_GRIDS grid and report, per task, the rate "
                         "with the best mean validation score (default: common.METHODS' rate)")
    ap.add_argument("--extra-seeds", type=int, nargs="+", default=[],
                    help="seeds run after the rates are chosen (on --seeds), at the chosen rate only")
    ap.add_argument("--from-results", action="store_true",
                    help="remake table and plot from the output folder's results.json, without training")
    a = ap.parse_args(argv)
    if a.from_results:  # the settings of the runs behind the stored results
        out = settings(a, "compare_methods")[3]
        a = original_args(ap, out, ["--out", out, "--from-results"])
    updates, every, seeds, out = settings(a, "compare_methods")
    if set(a.extra_seeds) & set(seeds) and not a.from_results:
        ap.error(f"--extra-seeds {a.extra_seeds} repeat seeds of --seeds {seeds}")
    if a.from_results:
        stored = stored_per_seed(out)
        per_seed, seeds, size = stored["per_seed"], stored["seeds"], stored["size"]
        tasks = list(dict.fromkeys(k.split("/")[0] for k in per_seed))
        methods = list(dict.fromkeys(k.split("/")[1] for k in per_seed))
    else:
        tasks, methods, size = a.tasks, a.methods, a.size
        runs = method_runs(tasks, methods, seeds, updates, every, size, lr_grid=a.lr_grid)
        log(f"{len(runs)} runs ({size} backbone, seeds {seeds}, {updates} updates each)")
        results = execute_all(runs, a.quick, a.workers)
        per_seed = per_seed_values(results, tasks, methods, seeds, updates, every, size, a.lr_grid)
        if a.extra_seeds:
            extra = [lr_run(t, m, per_seed[f"{t}/{m}"]["lr"], updates, every, s, size)
                     for t in tasks for m in methods for s in a.extra_seeds]
            log(f"{len(extra)} runs of seeds {a.extra_seeds} at the chosen rates")
            results.update(execute_all(extra, a.quick, a.workers))
            per_seed = per_seed_values(results, tasks, methods, seeds, updates, every, size, a.lr_grid, a.extra_seeds)
        seeds = seeds + a.extra_seeds
    baselines = {task: baseline(task, "test", a.quick) for task in tasks}
    rows = summarize(per_seed, tasks, methods, baselines, updates)
    rates = ("Learning rates: each method's common.LR_GRIDS grid (" + "; ".join(
        f"{m} {', '.join(f'{x:g}' for x in LR_GRIDS[m])}" for m in methods) + "), the rate with the best mean "
             f"validation score over seeds {[x for x in seeds if x not in a.extra_seeds]} chosen per task and "
             "method; the test scores are those runs'"
             + (f", and seeds {a.extra_seeds}' at the chosen rate. " if a.extra_seeds else ". ")
             if a.lr_grid else "Learning rates: common.METHODS' (chosen on the micro backbone). ")
    save_results(out, f"Method comparison ({size} backbone)", rows, HEADER,
                 f"The {size} OFA backbone pretrained on the synthetic pretraining mix, tuned {updates} updates per "
                 f"run on each downstream task (batch 32), validated (greedy) every {every} updates; the test split "
                 f"is scored on the best validation checkpoint by fairseq-generate (beam 5). Seeds {seeds}: mean ± "
                 "sample standard deviation. Each task's trivial baseline (experiments/baselines.py) is scored on the "
                 "same test split; the share of finetuning is (method - baseline) / (finetune - baseline), seed by "
                 "seed "
                 "(0: the baseline, 1: finetuning; negative: below the baseline). Verdicts: Welch's t-test of the "
                 "seeds' test scores against finetuning's, two-sided at 0.05. Seconds are wall time of fairseq-train, "
                 f"{a.workers} runs at a time on 2 cores. " + rates + f"The last column counts the seeds whose best "
                 f"validation score came at the last validation ({updates} updates): they may still have been "
                 "improving when the budget stopped them.",
                 remade_command_line(out, "compare_methods.py", argv) if a.from_results
                 else command_line("compare_methods.py", argv),
                 extra=dict(per_seed=per_seed, seeds=seeds, size=size, baselines=baselines))
    plot_methods(os.path.join(out, "methods.png"), tasks, methods, per_seed, f"{size}, {len(seeds)} seeds", baselines)
    return per_seed


if __name__ == "__main__":
    main()
