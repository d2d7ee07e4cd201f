"""The paper's ablations (Tables 3, 4, 6) in miniature: prompt length, depth (which layers get
prompts) and reparameterization, prompt tuning of the micro backbone on one downstream task.

    python experiments/ablations.py [--task caption] [--groups length depth reparam] [--quick]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import METHODS, REPO, TASKS, cli, ensure_backbone, evaluate, log, plot, save_results, train, trainable  # noqa: E402

LENGTHS = [10, 16, 30, 64, 100, 120]
BASE_LENGTH = 64  # the paper's recommendation, used in the depth and reparameterization groups


def length(n):
    return [f"train.encoder-prompt-length={n}", f"train.decoder-prompt-length={n}"]


GROUPS = {
    "length": {f"length {n}": length(n) for n in LENGTHS},
    "depth": {
        # a prompt that is off takes no options
        "encoder only": length(BASE_LENGTH) + ["train.decoder-prompt=false", "train.decoder-prompt-length=null"],
        "decoder only": length(BASE_LENGTH) + ["train.encoder-prompt=false", "train.encoder-prompt-length=null"],
        "both": length(BASE_LENGTH),
        "bottom layer": length(BASE_LENGTH) + ["train.encoder-prompt-layers=bottom-1", "train.decoder-prompt-layers=bottom-1"],
        "top layer": length(BASE_LENGTH) + ["train.encoder-prompt-layers=top-1", "train.decoder-prompt-layers=top-1"],
    },
    "reparam": {
        "no reparameterization": length(BASE_LENGTH),
        "MLP reparameterization": length(BASE_LENGTH) + [
            "train.encoder-prompt-projection=true", "train.decoder-prompt-projection=true",
            "train.encoder-prompt-dim=128", "train.decoder-prompt-dim=128"],
    },
}


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="caption", choices=list(TASKS))
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    a = ap.parse_args(argv)
    updates = a.updates or (3 if a.quick else 200)
    root = a.out or os.path.join(REPO, ".cache/experiments/ablations" if a.quick else "docs/ablations")
    ensure_backbone(a.quick)
    command = "python experiments/ablations.py " + " ".join(argv if argv is not None else sys.argv[1:])
    metric = TASKS[a.task]["metric"]
    for group in a.groups:
        out, rows, labels, scores = os.path.join(root, group), [], [], []
        for label, options in GROUPS[group].items():
            if a.quick and group == "length" and label not in ("length 10", "length 64"):
                continue
            name = f"{a.task}_{label.replace(' ', '_')}"
            ckpt, seconds, text = train(name, out, a.task, METHODS["prompt"] + options, updates)
            score = evaluate(name, out, a.task, ckpt)
            n, total = trainable(text)
            rows.append([label, f"{score:.4f}", f"{n:,} ({100 * n / total:.2f}%)", f"{seconds:.0f}"])
            labels.append(label)
            scores.append(score)
            log(f"{group} / {label}: {score:.4f}")
        save_results(out, f"Ablation: prompt {group} ({a.task})", rows,
                     ["setting", metric, "trainable parameters", "train seconds"],
                     f"Prompt tuning of the micro backbone, {updates} updates per run on the downstream {a.task} "
                     f"task; length {BASE_LENGTH} where the length is not the variable; test split, beam 5.", command)
        if group == "length":
            plot(os.path.join(out, "length.png"), f"Prompt length ({a.task})",
                 {"prompt tuning": ([int(s.split()[1]) for s in labels], scores)}, "prompt length", metric)
        else:
            plot(os.path.join(out, f"{group}.png"), f"Prompt {group} ({a.task})", {"prompt tuning": (labels, scores)},
                 group, metric, kind="bar", xticks=labels)


if __name__ == "__main__":
    main()
