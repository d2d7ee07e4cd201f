"""The paper's ablations (Tables 3, 4, 6) in miniature, around its recommended setup (length 64, prompts in
every layer of both sides, lr 0.03): prompt length, depth (which layers get prompts) and reparameterization,
prompt tuning on one downstream task, several seeds.

    python experiments/ablations.py [--task caption] [--groups length depth reparam] [--size micro] [--quick]
"""
import json
import os

from baselines import DESCRIPTION, baseline
from common import (
    METHODS,
    PROMPT_LENGTH,
    PROMPT_LR,
    SIZES,
    TASKS,
    Run,
    Series,
    cli,
    command_line,
    execute_all,
    original_args,
    plot,
    pm,
    prompt_length,
    remade_command_line,
    save_results,
    settings,
    verdict,
)

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


RECOMMENDED = {"length": f"length {PROMPT_LENGTH}", "depth": "both", "reparam": "no reparameterization"}


def group_out(root, group, size, task, own_out):
    # docs/ablations/<group> for the micro backbone on captions, docs/ablations/<size>_<task>/<group> otherwise
    other = not own_out and (size, task) != ("micro", "caption")
    return os.path.join(root, f"{size}_{task}" if other else "", group)


def write_group(out, group, task, size, seeds, per_seed, about, note, command, base):
    """One ablation group's table (the trivial baseline first, each setting against the recommended setup by
    Welch's t-test) and plot, from {setting: [test score of each seed]} and {setting: (trainable, seconds)}."""
    metric = TASKS[task]["metric"]
    labels = list(per_seed)
    ref = RECOMMENDED[group]
    rows = [[f"trivial baseline: {DESCRIPTION[task]}", f"{base:.4f}", "-", "-", "0", "-"]]
    for label in labels:
        scores = per_seed[label]
        against = verdict(scores, per_seed[ref]) if ref in per_seed and label != ref else "-"
        rows.append([label, pm(scores), against, f"{min(scores):.4f} .. {max(scores):.4f}", *about[label]])
    save_results(out, f"Ablation: prompt {group} ({task}, {size} backbone)", rows,
                 ["setting", f"{metric} (mean ± sd)", f"against {ref} (Welch's t-test, 0.05)", "seed range",
                  "trainable parameters", "train seconds"], note, command,
                 extra=dict(per_seed=per_seed, seeds=seeds, size=size, task=task, baseline=base,
                            about={k: list(v) for k, v in about.items()}))
    if group == "length":
        plot(os.path.join(out, "length.png"), f"Prompt length ({task}, {size})",
             {"prompt tuning": Series([int(s.split()[1]) for s in labels], list(per_seed.values()))}, "prompt length",
             f"test {metric}", baseline=base)
    else:
        plot(os.path.join(out, f"{group}.png"), f"Prompt {group} ({task}, {size})",
             {"prompt tuning": Series(labels, list(per_seed.values()))}, group, f"test {metric}", kind="bar",
             xticks=labels, baseline=base)


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="caption", choices=list(TASKS))
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--from-results", action="store_true",
                    help="remake each group's table and plot from its results.json, without training")
    a = ap.parse_args(argv)
    if a.from_results:  # the settings of the runs behind the stored results
        out = group_out(settings(a, "ablations")[3], a.groups[0], a.size, a.task, a.out)
        a = original_args(ap, out, [*(["--out", a.out] if a.out else []), "--groups", *a.groups, "--from-results"])
    updates, every, seeds, root = settings(a, "ablations")
    base = baseline(a.task, "test", a.quick)
    note = (f"Prompt tuning of the {a.size} backbone, {updates} updates per run on the downstream {a.task} task, lr "
            f"{PROMPT_LR}, length {PROMPT_LENGTH} in every layer of both sides where that is not the variable; "
            f"validated every {every} updates, test split on the best checkpoint (beam 5); seeds {seeds}. The trivial "
            "baseline (experiments/baselines.py) is scored on the same test split; verdicts: Welch's t-test of the "
            "seeds' scores against the recommended setup's, two-sided at 0.05.")
    if a.from_results:
        for group in a.groups:
            out = group_out(root, group, a.size, a.task, a.out)
            with open(os.path.join(out, "results.json")) as f:
                stored = json.load(f)
            # older files keep trainable parameters and seconds only in their rows (the last two columns)
            about = stored.get("about") or {r[0]: r[-2:] for r in stored["rows"] if r[0] in stored["per_seed"]}
            write_group(out, group, a.task, a.size, stored["seeds"], stored["per_seed"], about, note,
                        remade_command_line(out, "ablations.py", argv), base)
        return
    settings_of = {g: {k: v for k, v in GROUPS[g].items() if not (a.quick and g == "length" and k not in QUICK_LENGTHS)}
                   for g in a.groups}
    runs = {(g, k, s): ablation_run(a.task, k, v, updates, every, s, a.size)
            for g in a.groups for k, v in settings_of[g].items() for s in seeds}
    results = execute_all(list(runs.values()), a.quick, a.workers)
    for group in a.groups:
        per_seed, about = {}, {}
        for label in settings_of[group]:
            rs = [results[runs[group, label, s]] for s in seeds]
            per_seed[label] = [r["score"] for r in rs]
            about[label] = (f"{rs[0]['trained']:,} ({100 * rs[0]['trained'] / rs[0]['total']:.2f}%)",
                            f"{sum(r['seconds'] for r in rs) / len(rs):.0f}")
        write_group(group_out(root, group, a.size, a.task, a.out), group, a.task, a.size, seeds, per_seed, about,
                    note, command_line("ablations.py", argv), base)


if __name__ == "__main__":
    main()
