"""The paper's Tables 1-2 in miniature: finetuning, prompt tuning, adapters and BitFit on the same
frozen-or-not micro backbone, for the synthetic benchmark's downstream tasks.

    python experiments/compare_methods.py [--tasks caption snli_ve ...] [--updates 200] [--every 25] [--quick]

Each run validates by generation every --every updates (OFA's --eval-cider / --eval-acc, greedy) and
keeps checkpoint_best.pt; the test split is scored on that checkpoint with fairseq-generate (beam 5).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, REPO, TASKS, cli, ensure_backbone, evaluate, log, plot, save_results, train,  # noqa: E402
                    trainable, validation, validation_curve)


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--every", type=int, help="validate every N updates (default 25, quick 1)")
    a = ap.parse_args(argv)
    updates, every = a.updates or (3 if a.quick else 200), a.every or (1 if a.quick else 25)
    out = a.out or os.path.join(REPO, ".cache/experiments/compare_methods" if a.quick else "docs/compare_methods")
    ensure_backbone(a.quick)
    rows, scores = [], {m: [] for m in a.methods}
    for task in a.tasks:
        for method in a.methods:
            name = f"{task}_{method}"
            ckpt, seconds, text = train(name, out, task, METHODS[method] + validation(task, every), updates)
            curve, per_epoch = validation_curve(text)
            best_updates, best_valid, best_seconds = max(curve, key=lambda p: (p[1], -p[0]))  # earliest best
            score = evaluate(name, out, task, ckpt.replace("checkpoint_last.pt", "checkpoint_best.pt"))
            n, total = trainable(text)
            scores[method].append(score)
            rows.append([task, method, f"{score:.4f}", TASKS[task]["metric"], f"{n:,} ({100 * n / total:.2f}%)",
                         f"{best_valid:.4f}", best_updates, f"{best_updates / per_epoch:.1f}", f"{best_seconds:.0f}",
                         f"{seconds:.0f}"])
            log(f"{task} {method}: test {score:.4f}, best validation {best_valid:.4f} at update {best_updates}")
    save_results(out, "Method comparison", rows,
                 ["task", "method", "test score", "metric", "trainable parameters", "best validation score",
                  "updates to best", "epochs to best", "seconds to best", f"seconds for {updates} updates"],
                 f"Micro OFA backbone pretrained on the synthetic pretraining mix, tuned {updates} updates per "
                 f"run on each downstream task (batch 32), validated (greedy) every {every} updates; the test split "
                 "is scored on the best validation checkpoint by fairseq-generate (beam 5). Seconds are wall time of "
                 "fairseq-train from its first epoch, validation included.",
                 "python experiments/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    plot_methods(os.path.join(out, "methods.png"), a.tasks, scores)
    return rows


def plot_methods(path, tasks, scores):
    """Grouped bars per task; relative to finetuning's score when it ran (CIDEr and accuracies differ in scale)."""
    base = scores.get("finetune")
    if base and all(base):
        scores = {m: [v / b for v, b in zip(s, base)] for m, s in scores.items()}
    plot(path, "Methods on the synthetic benchmark", {m: (list(range(len(tasks))), s) for m, s in scores.items()},
         "task", "test score / finetuning's" if base and all(base) else "test score", kind="bar", xticks=tasks)


if __name__ == "__main__":
    main()
