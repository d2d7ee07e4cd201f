"""Convergence, the paper's main limitation of prompt tuning, and two remedies beyond it: validation score
against updates for finetuning and for prompt tuning from each start, with several seeds; the updates and the
wall time each start needs to reach 95% of finetuning's best validation score, and its final test score.

    python experiments/convergence.py [--tasks caption vqa ...] [--inits random vocab pretrained transfer ...]
                                      [--seeds 1 2 3] [--updates 200] [--every 25] [--quick]

Starts (--prompt-init): `random` (OFA's), `vocab`, `activations`; `pretrained`: a prompt tuned on the
pretraining mix with the backbone frozen (the paper's "prompt learning during pretraining", its future work),
exported with `python -m ofa_prompt.prompt_file export` and used to start every downstream prompt;
`transfer`: the prompt file another task tuned (SPoT-style), same seed; `lr0.1`, `lr0.3`: random start with a 3x or 10x
learning rate. The cheap remedies of the model (random start): `gate` (--prompt-gate, zero-init gated prompt
attention), `residual` (--prompt-residual, E + MLP(E)), `no-dropout` (--no-backbone-dropout) and `remedies` (all
three), e.g. `--tasks caption refcoco --inits random gate residual no-dropout remedies --workers 1`.
"""
import hashlib
import json
import os
import shutil
import sys

from baselines import DESCRIPTION, baseline
from common import (
    METHODS,
    PRETRAIN_CONFIG,
    SIZES,
    TASKS,
    Run,
    Series,
    build_command,
    cli,
    command_line,
    ensure_backbone,
    execute_all,
    first_reaching,
    log,
    mean_std,
    method_run,
    original_args,
    plot_grid,
    pm,
    read_text,
    remade_command_line,
    run_logged,
    save_results,
    settings,
    store_dir,
    verdict,
)

REMEDIES = {"gate": ["train.prompt-gate=true"], "residual": ["train.prompt-residual=true"],
            "no-dropout": ["train.no-backbone-dropout=true"]}
REMEDIES["remedies"] = [option for options in REMEDIES.values() for option in options]
INITS = ["random", "vocab", "activations", "pretrained", "transfer", "lr0.1", "lr0.3", *REMEDIES]
# the task whose tuned prompt starts each task's prompt under `transfer`
TRANSFER_FROM = {"caption": "vqa", "vqa": "caption", "refcoco": "caption", "snli_ve": "vqa"}


def export(checkpoint: str, out: str) -> str:
    if not os.path.isfile(out) or os.path.getmtime(out) < os.path.getmtime(checkpoint):
        run_logged([sys.executable, "-m", "ofa_prompt.prompt_file", "export", checkpoint, out], out + ".log")
    return out


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:10]


def pretrained_prompt(quick: bool, size: str, updates: int) -> str:
    """A prompt tuned on the synthetic pretraining mix (all four tasks) with the backbone frozen: the
    downstream prompts' start under `pretrained`; made once per backbone and length of pretraining."""
    backbone = ensure_backbone(quick, size)
    save = os.path.join(store_dir(quick), size, f"prompt_pretraining_u{updates}")
    out = save + ".safetensors"
    cmd = build_command(PRETRAIN_CONFIG, [*SIZES[size].overrides(), f"restore_file={backbone}", *METHODS["prompt"],
                                          "train.encoder-prompt=true", "train.decoder-prompt=true",
                                          f"train.save-dir={save}", f"train.max-update={updates}",
                                          f"train.total-num-update={updates}",
                                          f"train.warmup-updates={min(50, max(updates // 4, 1))}"])
    key = digest(backbone) + " ".join(cmd)
    if os.path.isfile(out) and read_text(out + ".key") == key:
        return out
    log(f"prompt pretraining on the mix, {size} backbone frozen, {updates} updates")
    shutil.rmtree(save, ignore_errors=True)
    run_logged(cmd, save + ".train.log")
    export(os.path.join(save, "checkpoint_last.pt"), out)
    with open(out + ".key", "w") as f:
        f.write(key)
    return out


def init_run(task, init, seed, updates, every, size, start_file=None) -> Run:
    if init == "random":
        return method_run(task, "prompt", updates, every, seed, size)
    if init in ("lr0.1", "lr0.3"):  # random start, another learning rate (the paper's is 0.03)
        return Run(task, f"prompt_{init}", tuple(METHODS["prompt"] + [f"train.lr={init[2:]}"]), updates, every, seed,
                   size)
    if init in REMEDIES:
        return Run(task, f"prompt_{init}", tuple(METHODS["prompt"] + REMEDIES[init]), updates, every, seed, size)
    start = start_file or init
    label = f"prompt_init-{init}" + (f"-{digest(start_file)}" if start_file else "")
    return Run(task, label, tuple(METHODS["prompt"] + [f"train.prompt-init={start}"]), updates, every, seed, size)


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--inits", nargs="+", default=INITS[:5], choices=INITS)
    ap.add_argument("--pretrain-updates", type=int, help="updates of prompt pretraining (default 600, quick 3)")
    ap.add_argument("--from-results", action="store_true",
                    help="remake table and plot from the output folder's results.json, without training")
    a = ap.parse_args(argv)
    updates, every, seeds, out = settings(a, "convergence")
    if a.from_results:  # the runs' own settings, and their curves and test scores as stored
        a = original_args(ap, out, ["--out", out, "--from-results"])
        updates, every, _, out = settings(a, "convergence")
        with open(os.path.join(out, "results.json")) as f:
            stored = json.load(f)
        seeds = stored["seeds"]
        outcomes = {tuple(key.split("/")): [dict(curve=c, score=t) for c, t in zip(v["curves"], v["test"])]
                    for key, v in stored["per_seed"].items()}
    else:
        outcomes = train_all(a, updates, every, seeds)
    return write_tables(a, argv, outcomes, updates, every, seeds, out)


def train_all(a, updates, every, seeds):
    """{(task, label): [result of each seed]} of finetuning ("finetune") and each prompt start ("prompt, <init>")."""
    quick, size = a.quick, a.size
    ft = [method_run(t, "finetune", updates, every, s, size) for t in a.tasks for s in seeds]
    first = [init_run(t, i, s, updates, every, size) for t in a.tasks for s in seeds
             for i in a.inits if i not in ("pretrained", "transfer")]
    if "transfer" in a.inits:  # the source tasks' own prompts (random start) must be tuned first
        first += [init_run(TRANSFER_FROM[t], "random", s, updates, every, size) for t in a.tasks for s in seeds]
    results = execute_all(ft + first, quick, a.workers)
    second, start_of = [], {}
    # one pretrained prompt starts every task and seed
    pretrained = pretrained_prompt(quick, size, a.pretrain_updates or (3 if quick else 600)) \
        if "pretrained" in a.inits else None
    for t in a.tasks:
        for s in seeds:
            if pretrained:
                start_of[t, s, "pretrained"] = init_run(t, "pretrained", s, updates, every, size, pretrained)
            if "transfer" in a.inits:
                source = results[init_run(TRANSFER_FROM[t], "random", s, updates, every, size)]["checkpoint"]
                start = export(source, source.replace(".pt", f".{TRANSFER_FROM[t]}.safetensors"))
                start_of[t, s, "transfer"] = init_run(t, "transfer", s, updates, every, size, start)
            second += [start_of[t, s, i] for i in ("pretrained", "transfer") if (t, s, i) in start_of]
    results.update(execute_all(second, quick, a.workers))

    def run_of(t, s, i):
        return start_of.get((t, s, i)) or init_run(t, i, s, updates, every, size)

    outcomes = {(t, "finetune"): [results[r] for r in ft if r.task == t] for t in a.tasks}
    outcomes.update({(t, f"prompt, {i}"): [results[run_of(t, s, i)] for s in seeds] for t in a.tasks for i in a.inits})
    return outcomes


def write_tables(a, argv, outcomes, updates, every, seeds, out):
    """The convergence table and plot from {(task, label): [result of each seed]}."""
    rows, panels, per_seed, baselines = [], [], {}, {}
    tasks = list(dict.fromkeys(t for t, _ in outcomes))
    for t in tasks:
        ft_best = [max(p[1] for p in r["curve"]) for r in outcomes[t, "finetune"]]
        target = 0.95 * mean_std(ft_best)[0]
        ft_reach = [first_reaching(r["curve"], target) for r in outcomes[t, "finetune"]]
        ft_updates = mean_std([p[0] for p in ft_reach if p])[0] if any(ft_reach) else None
        baselines[t] = {split: baseline(t, split, a.quick) for split in ("valid", "test")}
        rows.append([t, f"trivial baseline: {DESCRIPTION[t]}", "-", "-", "-", "-", f"{baselines[t]['valid']:.4f}", "-",
                     f"{baselines[t]['test']:.4f}", "-", "-"])
        plain = [r["score"] for r in outcomes[t, "prompt, random"]] if (t, "prompt, random") in outcomes else None
        series = {}
        for label in [label for task, label in outcomes if task == t]:
            rs = outcomes[t, label]
            reach = [first_reaching(r["curve"], target) for r in rs]
            got = [p for p in reach if p]
            within = (mean_std([p[0] for p in got])[0] <= 2 * ft_updates) if got and ft_updates and \
                len(got) == len(rs) else False
            # the best validation score a run had by twice the updates finetuning needed to reach the target
            early = [max(p[1] for p in r["curve"] if p[0] <= 2 * ft_updates) for r in rs] if ft_updates else []
            tests = [r["score"] for r in rs]
            against = verdict(tests, plain) if plain and label not in ("finetune", "prompt, random") else "-"
            rows.append([t, label, f"{len(got)}/{len(rs)}", pm([p[0] for p in got], 0) if got else "-",
                         f"{mean_std([p[0] for p in got])[0] / ft_updates:.1f}x" if got and ft_updates else "-",
                         pm([p[2] for p in got], 0) if got else "-",
                         pm([max(p[1] for p in r["curve"]) for r in rs]), pm(early), pm(tests),
                         "yes" if within and label != "finetune" else ("-" if label == "finetune" else "no"), against])
            per_seed[f"{t}/{label}"] = dict(reached=[p[0] if p else None for p in reach], test=tests,
                                            best_within_2x=early, curves=[r["curve"] for r in rs])
            xs = [p[0] for p in rs[0]["curve"]]
            series[label] = Series(xs, [[r["curve"][k][1] for r in rs] for k in range(len(xs))])
        panels.append(dict(title=f"{t} (target {target:.3f} = 95% of finetuning's best)", xlabel="updates",
                           ylabel=f"validation {TASKS[t]['metric']} (greedy)", series=series,
                           baseline=baselines[t]["valid"]))
    save_results(out, f"Convergence ({a.size} backbone)", rows,
                 ["task", "run", "seeds reaching 95% of finetuning's best", "updates to reach",
                  "x finetuning's updates",
                  "seconds to reach", "best validation score", "best validation score within 2x finetuning's updates",
                  "test score", "within 2x finetuning's updates", "test against prompt, random (Welch's t-test, 0.05)"],
                 f"Validation (greedy generation) every {every} updates, {updates} updates per run, seeds {seeds}; the "
                 "target of each task is 95% of finetuning's best validation score (mean over seeds); updates and "
                 "seconds to reach it are over the seeds that reached it (seconds: wall time of fairseq-train, "
                 f"{a.workers} runs at a time on 2 cores); test score on the best checkpoint (beam 5). The trivial "
                 "baseline (experiments/baselines.py) is scored on the validation and test splits; verdicts: Welch's "
                 "t-test, two-sided at 0.05. "
                 f"Transfer sources: {', '.join(f'{t} from {TRANSFER_FROM[t]}' for t in tasks)}.",
                 remade_command_line(out, "convergence.py", argv) if a.from_results
                 else command_line("convergence.py", argv),
                 extra=dict(per_seed=per_seed, seeds=seeds, baselines=baselines))
    plot_grid(os.path.join(out, "convergence.png"), panels)
    return rows


if __name__ == "__main__":
    main()
