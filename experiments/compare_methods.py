"""The paper's Tables 1-2 in miniature: finetuning, prompt tuning, adapters and BitFit on one backbone, for
the synthetic benchmark's four downstream tasks, each with several seeds.

    python experiments/compare_methods.py [--size micro] [--tasks caption vqa ...] [--seeds 1 2 3] [--quick]

Each run validates by generation every --every updates (OFA's --eval-cider / --eval-acc, greedy) and keeps
checkpoint_best.pt; the test split is scored on that checkpoint with fairseq-generate (beam 5).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, SIZES, TASKS, Series, best_point, cli, command_line, execute_all, log,  # noqa: E402
                    mean_std, method_run, plot_grid, pm, save_results, settings)


def method_runs(tasks, methods, seeds, updates, every, size="micro", matched_loss=None):
    return [method_run(task, method, updates, every, seed, size, matched_loss)
            for task in tasks for method in methods for seed in seeds]


def shares(results, task, method, seeds, size, updates, every, matched_loss=None):
    """A method's test score over finetuning's, seed by seed (the same seed's finetuning run)."""
    def score(m, seed):
        return results[method_run(task, m, updates, every, seed, size, matched_loss)]["score"]
    return [score(method, s) / score("finetune", s) for s in seeds if score("finetune", s) > 0]


def summarize(results, tasks, methods, seeds, updates, every, size="micro"):
    """Rows of the comparison table and the per-seed values behind them."""
    rows, per_seed = [], {}
    for task in tasks:
        for method in methods:
            rs = [results[method_run(task, method, updates, every, s, size)] for s in seeds]
            scores = [r["score"] for r in rs]
            best = [best_point(r["curve"]) for r in rs]
            share = shares(results, task, method, seeds, size, updates, every) if "finetune" in methods else []
            per_seed[f"{task}/{method}"] = dict(score=scores, share=share, best_valid=[b[1] for b in best],
                                                 updates_to_best=[b[0] for b in best], seconds=[r["seconds"] for r in rs])
            n, total = rs[0]["trained"], rs[0]["total"]
            rows.append([task, method, TASKS[task]["metric"], pm(scores), pm(share, 2) if share else "-",
                         f"{min(scores):.4f} .. {max(scores):.4f}", f"{n:,} ({100 * n / total:.2f}%)",
                         pm([b[1] for b in best]), pm([b[0] for b in best], 0),
                         f"{mean_std([r['seconds'] for r in rs])[0]:.0f}"])
    return rows, per_seed


HEADER = ["task", "method", "metric", "test score (mean ± sd)", "share of finetuning", "seed range",
          "trainable parameters", "best validation score", "updates to best", "train seconds"]


def plot_methods(path, tasks, methods, per_seed, title):
    """One panel per task (its own metric), a bar per method with the seeds' standard deviation."""
    panels = [dict(title=f"{task} ({title})", xlabel="method", ylabel=TASKS[task]["metric"], kind="bar",
                   xticks=[""], series={m: Series([0], [per_seed[f"{task}/{m}"]["score"]]) for m in methods})
              for task in tasks]
    plot_grid(path, panels)


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    a = ap.parse_args(argv)
    updates, every, seeds, out = settings(a, "compare_methods")
    runs = method_runs(a.tasks, a.methods, seeds, updates, every, a.size)
    log(f"{len(runs)} runs ({a.size} backbone, seeds {seeds}, {updates} updates each)")
    results = execute_all(runs, a.quick, a.workers)
    rows, per_seed = summarize(results, a.tasks, a.methods, seeds, updates, every, a.size)
    save_results(out, f"Method comparison ({a.size} backbone)", rows, HEADER,
                 f"The {a.size} OFA backbone pretrained on the synthetic pretraining mix, tuned {updates} updates per "
                 f"run on each downstream task (batch 32), validated (greedy) every {every} updates; the test split "
                 f"is scored on the best validation checkpoint by fairseq-generate (beam 5). Seeds {seeds}: mean ± "
                 "sample standard deviation; the share of finetuning is taken seed by seed. Seconds are wall time of "
                 f"fairseq-train, {a.workers} runs at a time on 2 cores.",
                 command_line("compare_methods.py", argv), extra=dict(per_seed=per_seed, seeds=seeds, size=a.size))
    plot_methods(os.path.join(out, "methods.png"), a.tasks, a.methods, per_seed, f"{a.size}, {len(seeds)} seeds")
    return per_seed


if __name__ == "__main__":
    main()
