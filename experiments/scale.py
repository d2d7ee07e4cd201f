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
import json
import os
from typing import Optional

from baselines import baseline
from common import (
    METHODS,
    SIZES,
    TASKS,
    Series,
    cli,
    command_line,
    execute_all,
    log,
    mean_std,
    method_run,
    original_args,
    plot_grid,
    pm,
    pretraining,
    remade_command_line,
    save_results,
    settings,
    shares_of_finetuning,
    verdict,
)
from compare_methods import method_runs


def backbone_params(results, size) -> int:
    """The backbone's parameter count: the smallest total of the size's runs (prompts and adapters add theirs)."""
    return min(r["total"] for run, r in results.items() if run.size == size)


def run_scores(results, sizes, tasks, methods, seeds, updates, every, matched_loss=None):
    """{(size, task, method): [test score of each seed]} of the stored runs."""
    return {(size, task, method): [results[method_run(task, method, updates, every, s, size, matched_loss)]["score"]
                                   for s in seeds] for size in sizes for task in tasks for method in methods}


def scores_from_names(per_run: dict):
    """run_scores' dict from results.json's {run name: score} (names as common.Run.name writes them)."""
    scores = {}
    for name, score in per_run.items():
        backbone, rest = name.split("/")
        run, _, seed = rest.rsplit("_", 2)
        task, method = run.rsplit("_", 1)
        scores.setdefault((backbone.split("_")[0], task, method), []).append((int(seed[1:]), score))
    return {key: [score for _, score in sorted(values)] for key, values in scores.items()}


def share_table(scores, params, sizes, tasks, methods, baselines):
    """Rows (size, parameters, task, method, score, share from the baseline, test against finetuning) and
    {method: {size: [share of each task and seed]}}."""
    rows, pooled = [], {m: {} for m in methods if m != "finetune"}
    for size in sizes:
        for task in tasks:
            rows.append([size, f"{params[size]:,}", task, "trivial baseline", f"{baselines[task]:.4f}", "0", "-"])
            ft = scores[size, task, "finetune"]
            for method in methods:
                got = scores[size, task, method]
                share = shares_of_finetuning(got, ft, baselines[task])
                if method != "finetune":
                    pooled[method].setdefault(size, []).extend(share)
                rows.append([size, f"{params[size]:,}", task, method, pm(got), pm(share, 2) if method != "finetune"
                             else "1", verdict(got, ft, ("above finetuning", "below finetuning"))
                             if method != "finetune" else "-"])
    return rows, pooled


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--pretraining", choices=["matched", "final"], default="matched",
                    help="tune each size from its checkpoint pretrained to the largest size's final validation loss "
                         "(matched, the default) or from its last checkpoint (final)")
    ap.add_argument("--from-results", action="store_true",
                    help="remake tables and plots from the output folder's results.json, without training")
    a = ap.parse_args(argv)
    if a.from_results:  # the settings of the runs behind the stored results
        out = settings(a, "scale")[3]
        a = original_args(ap, out, ["--out", out, "--from-results"])
    if "finetune" not in a.methods:
        ap.error("--methods must include finetune: every share is of finetuning's score")
    updates, every, seeds, out = settings(a, "scale")
    if a.from_results:
        with open(os.path.join(out, "results.json")) as f:
            stored = json.load(f)
        scores, params, backbones = scores_from_names(stored["per_run"]), stored["params"], stored.get("backbones")
        seeds, sizes = stored["seeds"], list(params)
        tasks = list(dict.fromkeys(task for _, task, _ in scores))
        methods = list(dict.fromkeys(method for _, _, method in scores))
        matched = _matched_loss(stored["per_run"])
        per_run = stored["per_run"]
    else:
        sizes = sorted(dict.fromkeys(a.sizes), key=list(SIZES).index)  # smallest first
        tasks, methods = a.tasks, a.methods
        matched = None
        if a.pretraining == "matched":
            matched = pretraining(a.quick, sizes[-1]).checkpoints[-1][1]
            log(f"backbones matched at the {sizes[-1]} backbone's final validation loss {matched:.4f}")
        runs = [r for size in sizes for r in method_runs(tasks, methods, seeds, updates, every, size, matched)]
        log(f"{len(runs)} runs: sizes {sizes}, seeds {seeds}, {updates} updates each")
        results = execute_all(runs, a.quick, a.workers)
        scores = run_scores(results, sizes, tasks, methods, seeds, updates, every, matched)
        backbones = {s: (pretraining(a.quick, s, matched).matched(matched)[:2] if matched is not None else None)
                     for s in sizes}
        params = {size: backbone_params(results, size) for size in sizes}
        per_run = {run.name: res["score"] for run, res in results.items()}
    baselines = {task: baseline(task, "test", a.quick) for task in tasks}
    rows, pooled = share_table(scores, params, sizes, tasks, methods, baselines)

    def change(m):
        first, last = pooled[m][sizes[0]], pooled[m][sizes[-1]]
        return f"{mean_std(last)[0] - mean_std(first)[0]:+.2f}" if first and last else "-"

    def test(m):
        first, last = pooled[m][sizes[0]], pooled[m][sizes[-1]]
        return verdict(last, first, ("rises", "falls")) if len(first) > 1 and len(last) > 1 else "-"

    trend = [[m, *(pm(pooled[m][s], 2) for s in sizes), change(m), test(m)] for m in pooled]
    if matched is None:
        how = "each the last checkpoint of its pretraining on the synthetic pretraining mix"
    else:
        how = (f"each the first checkpoint of its pretraining on the synthetic pretraining mix whose validation loss "
               f"is at or below {matched:.4f}, the {sizes[-1]} backbone's final one (" + ", ".join(
                   f"{s}: {u} updates, loss {loss:.4f}" for s, (u, loss) in backbones.items()) + ")")
    save_results(out, "Scale: share of finetuning's score against backbone size", rows,
                 ["size", "parameters", "task", "method", "test score (mean ± sd)",
                  "share of finetuning from the baseline", "against finetuning (Welch's t-test, 0.05)"],
                 f"Backbones {', '.join(f'{s} ({params[s]:,} parameters)' for s in sizes)}, {how}; every method "
                 f"tuned {updates} updates per run, validated every {every}, test split on the best checkpoint "
                 f"(beam 5); seeds {seeds}. Each task's trivial baseline (experiments/baselines.py) is scored on the "
                 "same test split; a share of finetuning is (method - baseline) / (finetune - baseline), seed by seed "
                 "(0: the baseline, 1: finetuning). Verdicts: Welch's t-test, two-sided at 0.05.\n\n"
                 "Share of finetuning's score from the baseline over all tasks and seeds (mean ± sd), its change from "
                 "the smallest to the largest size, and Welch's t-test of the largest size's shares against the "
                 "smallest's:\n\n| method | " + " | ".join(sizes) + " | change | largest vs smallest |\n|"
                 + "---|" * (len(sizes) + 3) + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in trend),
                 remade_command_line(out, "scale.py", argv) if a.from_results else command_line("scale.py", argv),
                 extra=dict(pooled=pooled, params=params, seeds=seeds, pretraining="final" if matched is None else
                            "matched", backbones=backbones, baselines=baselines, per_run=per_run))
    xs = [params[s] for s in sizes]
    panels = [dict(title=f"{task}: share of finetuning's {TASKS[task]['metric']}", xlabel="backbone parameters",
                   ylabel="(method - baseline) / (finetune - baseline)", logx=True, baseline=0.0,
                   series={m: Series(xs, [shares_of_finetuning(scores[s, task, m], scores[s, task, "finetune"],
                                                               baselines[task]) for s in sizes])
                           for m in methods if m != "finetune"})
              for task in tasks]
    if len(tasks) > 1:  # with one task the pooled panel would repeat it
        panels.append(dict(title="all tasks pooled", xlabel="backbone parameters", baseline=0.0,
                           ylabel="(method - baseline) / (finetune - baseline)", logx=True,
                           series={m: Series(xs, [pooled[m][s] for s in sizes]) for m in pooled}))
    plot_grid(os.path.join(out, "scale.png"), panels)
    panels = [dict(title=f"{task} (absolute)", xlabel="backbone parameters", ylabel=f"test {TASKS[task]['metric']}",
                   logx=True, baseline=baselines[task],
                   series={m: Series(xs, [scores[s, task, m] for s in sizes]) for m in methods})
              for task in tasks]
    plot_grid(os.path.join(out, "scores.png"), panels)
    return pooled


def _matched_loss(per_run: dict) -> Optional[float]:
    """The matched validation loss recorded in the run names (`<size>_matched<loss>/...`); None for runs from the
    last checkpoints."""
    backbone = next(iter(per_run)).split("/")[0]
    return float(backbone.split("_matched")[1]) if "_matched" in backbone else None


if __name__ == "__main__":
    main()
