"""The paper's ablations (Tables 3, 4, 6) in miniature, around its recommended setup (length 64, prompts in
every layer of both sides, lr 0.03): prompt length, depth (which layers get prompts) and reparameterization,
prompt tuning on one downstream task, several seeds.

    python experiments/ablations.py [--task caption] [--groups length depth reparam] [--size micro] [--quick]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, PROMPT_LENGTH, PROMPT_LR, SIZES, TASKS, Run, Series, cli, command_line, execute_all,  # noqa: E402
                    plot, pm, prompt_length, save_results, settings)

LENGTHS = [10, 16, 30, 64, 100, 120]

GROUPS = {
    "length": {f"length {n}": prompt_length(n) if n != PROMPT_LENGTH else [] for n in LENGTHS},
    "depth": {
        # a prompt that is off takes no options
        "encoder only": ["train.decoder-prompt=false", "train.decoder-prompt-length=null"],
        "decoder only": ["train.encoder-prompt=false", "train.encoder-prompt-length=null"],
        "both": [],
        "bottom layer": ["train.encoder-prompt-layers=bottom-1", "train.decoder-prompt-layers=bottom-1"],
        "top layer": ["train.encoder-prompt-layers=top-1", "train.decoder-prompt-layers=top-1"],
    },
    "reparam": {
        "no reparameterization": [],
        "MLP reparameterization": ["train.encoder-prompt-projection=true", "train.decoder-prompt-projection=true",
                                   "train.encoder-prompt-dim=128", "train.decoder-prompt-dim=128"],
    },
}
QUICK_LENGTHS = ("length 10", "length 64")


def ablation_run(task, setting, extra, updates, every, seed, size) -> Run:
    """The recommended setup's run (shared with the other studies) when `extra` changes nothing."""
    label = "prompt" if not extra else "prompt_" + setting.replace(" ", "-")
    return Run(task, label, tuple(METHODS["prompt"] + extra), updates, every, seed, size)


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="caption", choices=list(TASKS))
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    a = ap.parse_args(argv)
    updates, every, seeds, root = settings(a, "ablations")
    settings_of = {g: {k: v for k, v in GROUPS[g].items() if not (a.quick and g == "length" and k not in QUICK_LENGTHS)}
                   for g in a.groups}
    runs = {(g, k, s): ablation_run(a.task, k, v, updates, every, s, a.size)
            for g in a.groups for k, v in settings_of[g].items() for s in seeds}
    results = execute_all(list(runs.values()), a.quick, a.workers)
    metric = TASKS[a.task]["metric"]
    for group in a.groups:
        # docs/ablations/<group> for the micro backbone on captions, docs/ablations/<size>_<task>/<group> otherwise
        other = not a.out and (a.size, a.task) != ("micro", "caption")
        out = os.path.join(root, f"{a.size}_{a.task}" if other else "", group)
        rows, labels, values = [], [], []
        for label in settings_of[group]:
            rs = [results[runs[group, label, s]] for s in seeds]
            scores = [r["score"] for r in rs]
            rows.append([label, pm(scores), f"{min(scores):.4f} .. {max(scores):.4f}",
                         f"{rs[0]['trained']:,} ({100 * rs[0]['trained'] / rs[0]['total']:.2f}%)",
                         f"{sum(r['seconds'] for r in rs) / len(rs):.0f}"])
            labels.append(label)
            values.append(scores)
        save_results(out, f"Ablation: prompt {group} ({a.task}, {a.size} backbone)", rows,
                     ["setting", f"{metric} (mean ± sd)", "seed range", "trainable parameters", "train seconds"],
                     f"Prompt tuning of the {a.size} backbone, {updates} updates per run on the downstream {a.task} "
                     f"task, lr {PROMPT_LR}, length {PROMPT_LENGTH} in every layer of both "
                     f"sides where that is not the variable; validated every {every} updates, test split on the best "
                     f"checkpoint (beam 5); seeds {seeds}.", command_line("ablations.py", argv),
                     extra=dict(per_seed=dict(zip(labels, values)), seeds=seeds, size=a.size, task=a.task))
        if group == "length":
            plot(os.path.join(out, "length.png"), f"Prompt length ({a.task}, {a.size})",
                 {"prompt tuning": Series([int(s.split()[1]) for s in labels], values)}, "prompt length", metric)
        else:
            plot(os.path.join(out, f"{group}.png"), f"Prompt {group} ({a.task}, {a.size})",
                 {"prompt tuning": Series(labels, values)}, group, metric, kind="bar", xticks=labels)


if __name__ == "__main__":
    main()
