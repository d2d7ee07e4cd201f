"""Convergence, the paper's main limitation of prompt tuning: validation score against updates for
finetuning and for prompt tuning with each --prompt-init and a higher-learning-rate recipe; reports
the updates (and epochs) each needs to reach 95% of finetuning's best score.

    python experiments/convergence.py [--task caption] [--updates 300] [--every 50] [--quick]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, REPO, TASKS, cli, ensure_backbone, log, plot, save_results, train,  # noqa: E402
                    validation, validation_curve)

RUNS = {
    "finetune": METHODS["finetune"],
    "prompt, random init": METHODS["prompt"],
    "prompt, vocab init": METHODS["prompt"] + ["train.prompt-init=vocab"],
    "prompt, activations init": METHODS["prompt"] + ["train.prompt-init=activations"],
    "prompt, random init, lr x3": METHODS["prompt"] + ["train.lr=0.3"],
}


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="caption", choices=list(TASKS))
    ap.add_argument("--every", type=int, help="validate every N updates (default 25, quick 1)")
    a = ap.parse_args(argv)
    updates, every = a.updates or (3 if a.quick else 300), a.every or (1 if a.quick else 25)
    out = a.out or os.path.join(REPO, ".cache/experiments/convergence" if a.quick else "docs/convergence")
    ensure_backbone(a.quick)
    curves = {}
    for label, options in RUNS.items():
        name = f"{a.task}_{label.replace(', ', '_').replace(' ', '_')}"
        _, _, text = train(name, out, a.task, options + validation(a.task, every), updates)
        points, updates_per_epoch = validation_curve(text)
        curves[label] = ([u for u, _, _ in points], [s for _, s, _ in points])
        log(f"{label}: best {max(curves[label][1]):.4f}")
    target = 0.95 * max(curves["finetune"][1])
    rows = []
    for label, (us, ss) in curves.items():
        reached = next((u for u, s in zip(us, ss) if s >= target), None)
        rows.append([label, f"{max(ss):.4f}", reached if reached is not None else f"not within {updates}",
                     f"{reached / updates_per_epoch:.1f}" if reached is not None else "-"])
    save_results(out, f"Convergence ({a.task})", rows, ["run", "best validation score", "updates to 95% of finetuning's best",
                                                         "epochs"],
                 f"Validation {'CIDEr' if a.task == 'caption' else 'score'} (greedy decoding) every {every} updates, "
                 f"{updates} updates per run, {updates_per_epoch} updates per epoch; target {target:.4f} = 95% of "
                 "finetuning's best.", "python experiments/convergence.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    plot(os.path.join(out, "convergence.png"), f"Convergence ({a.task})", curves, "updates", "validation score")


if __name__ == "__main__":
    main()
