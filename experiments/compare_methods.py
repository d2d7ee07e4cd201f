"""The paper's Tables 1-2 in miniature: finetuning, prompt tuning, adapters and BitFit on the same
frozen-or-not micro backbone, for the synthetic benchmark's downstream tasks.

    python experiments/compare_methods.py [--tasks caption snli_ve ...] [--updates 200] [--quick]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import METHODS, REPO, TASKS, cli, ensure_backbone, evaluate, log, plot, save_results, train, trainable  # noqa: E402


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    a = ap.parse_args(argv)
    updates = a.updates or (3 if a.quick else 200)
    out = a.out or os.path.join(REPO, ".cache/experiments/compare_methods" if a.quick else "docs/compare_methods")
    ensure_backbone(a.quick)
    rows, scores = [], {m: [] for m in a.methods}
    for task in a.tasks:
        for method in a.methods:
            ckpt, seconds, text = train(f"{task}_{method}", out, task, METHODS[method], updates)
            score = evaluate(f"{task}_{method}", out, task, ckpt)
            n, total = trainable(text)
            scores[method].append(score)
            rows.append([task, method, f"{score:.4f}", TASKS[task]["metric"], f"{n:,} ({100 * n / total:.2f}%)",
                         updates, f"{seconds:.0f}"])
            log(f"{task} {method}: {score:.4f}")
    save_results(out, "Method comparison", rows,
                 ["task", "method", "score", "metric", "trainable parameters", "updates", "train seconds"],
                 f"Micro OFA backbone pretrained on the synthetic pretraining captions, tuned {updates} updates per "
                 "run on each downstream task (batch 32), test split scored by fairseq-generate (beam 5).",
                 "python experiments/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    plot(os.path.join(out, "methods.png"), "Methods on the synthetic benchmark",
         {m: (list(range(len(a.tasks))), s) for m, s in scores.items()}, "task", "score", kind="bar", xticks=a.tasks)
    return rows


if __name__ == "__main__":
    main()
