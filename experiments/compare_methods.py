"""The paper's Tables 1-2 in miniature: finetuning, prompt tuning, adapters and BitFit on one backbone, for
the synthetic benchmark's four downstream tasks, each with several seeds.

    python experiments/compare_methods.py [--size micro] [--tasks caption vqa ...] [--seeds 1 2 3] [--quick]

Each run validates by generation every --every updates (OFA's --eval-cider / --eval-acc, greedy) and keeps
checkpoint_best.pt; the test split is scored on that checkpoint with fairseq-generate (beam 5).
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
    mean_std,
    method_run,
    original_args,
    plot_grid,
    pm,
    remade_command_line,
    save_results,
    settings,
    shares_of_finetuning,
    verdict,
)


def method_runs(tasks, methods, seeds, updates, every, size="micro", matched_loss=None):
    return [method_run(task, method, updates, every, seed, size, matched_loss)
            for task in tasks for method in methods for seed in seeds]


def per_seed_values(results, tasks, methods, seeds, updates, every, size="micro"):
    """{task/method: the per-seed values behind a table row} of the stored runs."""
    per_seed = {}
    for task in tasks:
        for method in methods:
            rs = [results[method_run(task, method, updates, every, s, size)] for s in seeds]
            best = [best_point(r["curve"]) for r in rs]
            per_seed[f"{task}/{method}"] = dict(
                score=[r["score"] for r in rs], best_valid=[b[1] for b in best], updates_to_best=[b[0] for b in best],
                seconds=[r["seconds"] for r in rs], trainable=f"{rs[0]['trained']:,} "
                                                              f"({100 * rs[0]['trained'] / rs[0]['total']:.2f}%)")
    return per_seed


def summarize(per_seed, tasks, methods, baselines):
    """Rows of the comparison table from the per-seed values, each task's trivial baseline first; shares of
    finetuning seed by seed (stored into per_seed) and Welch's t-test of each method against finetuning."""
    rows = []
    for task in tasks:
        metric = TASKS[task]["metric"]
        rows.append([task, f"trivial baseline: {DESCRIPTION[task]}", metric, f"{baselines[task]:.4f}", "0", "-", "-",
                     "0", "-", "-", "-"])
        ft = per_seed[f"{task}/finetune"]["score"] if "finetune" in methods else None
        for method in methods:
            v = per_seed[f"{task}/{method}"]
            scores = v["score"]
            if ft is not None:
                v["share"] = shares_of_finetuning(scores, ft, baselines[task])
            test = verdict(scores, ft, ("above finetuning", "below finetuning")) if ft and method != "finetune" else "-"
            rows.append([task, method, metric, pm(scores), pm(v["share"], 2) if ft else "-", test,
                         f"{min(scores):.4f} .. {max(scores):.4f}", v["trainable"], pm(v["best_valid"]),
                         pm(v["updates_to_best"], 0), f"{mean_std(v['seconds'])[0]:.0f}"])
    return rows


HEADER = ["task", "method", "metric", "test score (mean ± sd)", "share of finetuning from the baseline",
          "against finetuning (Welch's t-test, 0.05)", "seed range", "trainable parameters", "best validation score",
          "updates to best", "train seconds"]


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
    ap.add_argument("--from-results", action="store_true",
                    help="remake table and plot from the output folder's results.json, without training")
    a = ap.parse_args(argv)
    if a.from_results:  # the settings of the runs behind the stored results
        out = settings(a, "compare_methods")[3]
        a = original_args(ap, out, ["--out", out, "--from-results"])
    updates, every, seeds, out = settings(a, "compare_methods")
    if a.from_results:
        stored = stored_per_seed(out)
        per_seed, seeds, size = stored["per_seed"], stored["seeds"], stored["size"]
        tasks = list(dict.fromkeys(k.split("/")[0] for k in per_seed))
        methods = list(dict.fromkeys(k.split("/")[1] for k in per_seed))
    else:
        tasks, methods, size = a.tasks, a.methods, a.size
        runs = method_runs(tasks, methods, seeds, updates, every, size)
        log(f"{len(runs)} runs ({size} backbone, seeds {seeds}, {updates} updates each)")
        per_seed = per_seed_values(execute_all(runs, a.quick, a.workers), tasks, methods, seeds, updates, every, size)
    baselines = {task: baseline(task, "test", a.quick) for task in tasks}
    rows = summarize(per_seed, tasks, methods, baselines)
    save_results(out, f"Method comparison ({size} backbone)", rows, HEADER,
                 f"The {size} OFA backbone pretrained on the synthetic pretraining mix, tuned {updates} updates per "
                 f"run on each downstream task (batch 32), validated (greedy) every {every} updates; the test split "
                 f"is scored on the best validation checkpoint by fairseq-generate (beam 5). Seeds {seeds}: mean ± "
                 "sample standard deviation. Each task's trivial baseline (experiments/baselines.py) is scored on the "
                 "same test split; the share of finetuning is (method - baseline) / (finetune - baseline), seed by "
                 "seed "
                 "(0: the baseline, 1: finetuning; negative: below the baseline). Verdicts: Welch's t-test of the "
                 "seeds' test scores against finetuning's, two-sided at 0.05. Seconds are wall time of fairseq-train, "
                 f"{a.workers} runs at a time on 2 cores.",
                 remade_command_line(out, "compare_methods.py", argv) if a.from_results
                 else command_line("compare_methods.py", argv),
                 extra=dict(per_seed=per_seed, seeds=seeds, size=size, baselines=baselines))
    plot_methods(os.path.join(out, "methods.png"), tasks, methods, per_seed, f"{size}, {len(seeds)} seeds", baselines)
    return per_seed


if __name__ == "__main__":
    main()
