"""The paper's adversarial analysis in miniature: FGSM on the image pixels and on the text embeddings at
several epsilons, for every tuning method's checkpoints of compare_methods.py, on every task and seed.

    python experiments/robustness.py [--tasks ...] [--attacks image text] [--seeds 1 2 3] [--finetune-every 5] [--quick]

x_adv = clip(x + eps * sign(grad_x loss), -1, 1) with the teacher-forced loss of the reference answer;
images live in [-1, 1] (OFA's normalization); text: the token embeddings, unclipped. The checkpoints are the
method comparison's (trained here first when the run store lacks them); finetuning's run validates every
--finetune-every updates and keeps each validation's checkpoint. A weaker model loses less to an attack, so
each drop is relative to the same model's clean score, and finetuning is attacked twice: at its best
checkpoint, and for each other method at its checkpoint whose validation score is closest to that method's
best, seed by seed: finetuning at a matched clean score. The table says where clean scores still differ by
more than --match (relative) to compare them.
"""
import hashlib
import json
import os
from argparse import Namespace
from dataclasses import replace

import torch

from baselines import DESCRIPTION, baseline
from common import (
    METHODS,
    SIZES,
    TASKS,
    Series,
    best_point,
    cli,
    closest_point,
    command_line,
    ensure_backbone,
    execute_all,
    log,
    mean_std,
    plot_grid,
    pm,
    relative_drop,
    remade_command_line,
    save_results,
    settings,
)
from compare_methods import method_runs

EPS = {"image": [0.0, 0.02, 0.05, 0.1], "text": [0.0, 0.05, 0.1, 0.5]}  # as many of each: one table
MATCHED = "finetune at {}'s score"  # the row of finetuning's checkpoint matched to a method's clean score
# finetuning's validation interval: with its checkpoints 25 updates apart, the matched ones missed prompt tuning's
# clean score by 16-31% on three of the four tasks
FINETUNE_EVERY = 5


def loss_and_inputs(model, sample, on_text: bool):
    """Teacher-forced loss with gradients to the image (or the token embeddings)."""
    net = dict(sample["net_input"])
    images = net["patch_images"].clone().requires_grad_(not on_text)
    emb = model.encoder.embed_tokens(net["src_tokens"]).detach().requires_grad_(on_text) if on_text else None
    enc = model.encoder(net["src_tokens"], net["src_lengths"], patch_images=images, patch_masks=net["patch_masks"],
                        token_embeddings=emb)
    logits = model.decoder(net["prev_output_tokens"], encoder_out=enc)[0]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), sample["target"].flatten(),
                                             ignore_index=model.decoder.padding_idx)
    return loss, (emb if on_text else images)


def attacked(model, sample, eps: float, on_text: bool):
    net = dict(sample["net_input"])
    if eps == 0:
        return {**sample, "net_input": net}
    loss, x = loss_and_inputs(model, sample, on_text)
    (grad,) = torch.autograd.grad(loss, x)
    adv = (x + eps * grad.sign()).detach()
    if on_text:
        net["token_embeddings"] = adv
    else:
        net["patch_images"] = adv.clamp(-1, 1)
    return {**sample, "net_input": net}


def score(ckpt: str, task_name: str, eps_list, on_text: bool, max_batches: int, beam: int):
    """{eps: mean per-sample score} on the first max_batches test batches of 32."""
    from fairseq import checkpoint_utils

    data = os.path.join(os.environ["DEMO_DATA"], f"downstream_{TASKS[task_name]['file']}_test.tsv")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": data})
    model = models[0].eval()
    task.load_dataset("test")
    ds = task.datasets["test"]
    generator = task.build_generator([model], Namespace(beam=beam, max_len_b=40))
    out = {}
    for eps in eps_list:
        total, n = 0.0, 0
        for start in range(0, min(len(ds), 32 * max_batches), 32):
            sample = ds.collater([ds[i] for i in range(start, min(start + 32, len(ds)))])
            adv = attacked(model, sample, eps, on_text)
            with torch.no_grad():
                hyps = [task.decode(h[0]["tokens"]) for h in task.generate(generator, [model], adv)]
            scores = task.batch_scores(hyps, sample)
            total, n = total + sum(scores), n + len(scores)
        out[eps] = total / n
    return out


def stored_score(run_key: str, ckpt: str, task: str, eps_list, on_text: bool, max_batches: int, beam: int):
    """score() of a run's checkpoint, kept beside it (keyed by the run, the checkpoint and the attack's settings)."""
    key = hashlib.sha1(json.dumps([run_key, os.path.basename(ckpt), eps_list, on_text, max_batches, beam])
                       .encode()).hexdigest()[:12]
    path = ckpt.replace(".pt", f".fgsm-{key}.json")
    if os.path.isfile(path):
        with open(path) as f:
            return {float(k): v for k, v in json.load(f).items()}
    out = score(ckpt, task, eps_list, on_text, max_batches, beam)
    with open(path, "w") as f:
        json.dump(out, f)
    return out


def attacked_runs(tasks, methods, seeds, updates, every, size, finetune_every):
    """{(task, method, seed): run} of the method comparison, finetuning's validated every `finetune_every`
    updates with each validation's checkpoint kept, so that one falls close to each other method's clean score.
    It is the same training, seed by seed: fairseq seeds each update by its number, and validating does not
    draw from the training's random state (on CPU, up to the rounding that differs between two runs anyway)."""
    return {(r.task, r.label, r.seed): replace(r, every=finetune_every, keep_every_checkpoint=True)
            if r.label == "finetune" else r for r in method_runs(tasks, methods, seeds, updates, every, size)}


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="micro", choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--attacks", nargs="+", default=list(EPS), choices=list(EPS))
    ap.add_argument("--max-batches", type=int, default=2, help="test batches of 32 per epsilon (default 2)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--finetune-every", type=int, default=None,
                    help=f"finetuning's validation interval in updates, every validated checkpoint kept, from which "
                         f"the matched rows pick (default {FINETUNE_EVERY}; --quick: --every)")
    ap.add_argument("--match", type=float, default=0.15,
                    help="clean scores of a method and finetuning further apart than this (relative) are flagged")
    ap.add_argument("--from-results", action="store_true",
                    help="remake table and plot from the output folder's results.json, without attacking")
    a = ap.parse_args(argv)
    updates, every, seeds, out = settings(a, "robustness")
    if a.from_results:
        return remake(out, argv)
    finetune_every = a.finetune_every or (every if a.quick else FINETUNE_EVERY)
    runs = attacked_runs(a.tasks, a.methods, seeds, updates, every, a.size, finetune_every)
    results = execute_all(list(runs.values()), a.quick, a.workers)
    ensure_backbone(a.quick, a.size)
    rows, per_seed, matched_updates = [], {}, {}
    for attack in a.attacks:
        eps = EPS[attack]
        for task in a.tasks:
            clean = {}

            def attack_all(name, checkpoints, compare_to):
                """Attack [(run key, checkpoint)] (one per seed) and add their row, its clean score compared
                with `compare_to`'s."""
                got = [stored_score(key, ckpt, task, eps, attack == "text", 1 if a.quick else a.max_batches, a.beam)
                       for key, ckpt in checkpoints]
                log(f"{attack} {task} {name}: " + ", ".join(f"eps {e}: {pm([g[e] for g in got])}" for e in eps))
                clean[name] = mean_std([g[0.0] for g in got])[0]
                drops = {e: [relative_drop(g[0.0], g[e]) for g in got if g[0.0] > 0] for e in eps[1:]}
                per_seed[f"{attack}/{task}/{name}"] = {str(e): [g[e] for g in got] for e in eps}
                other = clean.get(compare_to)
                gap = abs(relative_drop(other, clean[name])) if other and name != compare_to else None
                rows.append([attack, task, name, *(pm([g[e] for g in got]) for e in eps),
                             *(f"{100 * mean_std(drops[e])[0]:.0f}% ± {100 * mean_std(drops[e])[1]:.0f}%"
                               if drops[e] else "-" for e in eps[1:]),
                             "-" if gap is None else
                             (f"clean {100 * gap:.0f}% apart: not comparable" if gap > a.match else "yes")])

            for method in a.methods:
                done = [results[runs[task, method, sd]] for sd in seeds]
                attack_all(method, [(r["key"], r["checkpoint"]) for r in done], "finetune")
                if method == "finetune" or "finetune" not in a.methods:
                    continue
                # finetuning at this method's clean score: its checkpoint whose validation score is closest to
                # the method's best one, seed by seed
                tuned = [runs[task, "finetune", sd] for sd in seeds]
                points = [closest_point(results[ft]["curve"], best_point(r["curve"])[1]) for ft, r in zip(tuned, done)]
                matched_updates[f"{task}/{method}"] = [p[0] for p in points]
                attack_all(MATCHED.format(method), [(results[ft]["key"], ft.checkpoint_at(a.quick, p[0]))
                                                    for ft, p in zip(tuned, points)], method)

    def eps_names(start=0):  # the two attacks' epsilons differ: a column names both
        return ["eps " + " / ".join(f"{EPS[k][i]} ({k})" for k in a.attacks) for i in range(start, len(EPS["image"]))]

    baselines = {task: baseline(task, "test", a.quick) for task in a.tasks}
    save_results(out, f"FGSM robustness ({a.size} backbone)", with_baselines(rows, baselines),
                 ["attack", "task", "method", "clean", *eps_names(1), *(f"drop at {n}" for n in eps_names(1)),
                  f"clean score within {100 * a.match:.0f}% of finetuning's (a matched row: of its method's)"],
                 f"FGSM on the test split's first {a.max_batches} batches of 32, beam {a.beam}, best checkpoints of "
                 f"the method comparison ({updates} updates, seeds {seeds}; mean ± sd over seeds). Epsilons: image "
                 f"{EPS['image']} (pixels in [-1, 1]), text {EPS['text']} (embeddings). A drop is relative to the same "
                 "checkpoint's clean score, taken seed by seed. Finetuning validates every "
                 f"{finetune_every} updates and keeps each validation's checkpoint (its best is among them); \""
                 + MATCHED.format("<method>") + "\": its checkpoint whose validation score is closest to the "
                 "method's best, seed by seed; the updates it was taken at are in results.json (matched_updates). "
                 + BASELINE_NOTE, command_line("robustness.py", argv),
                 extra=dict(per_seed=per_seed, eps=EPS, seeds=seeds, matched_updates=matched_updates, match=a.match,
                            baselines=baselines))
    plot_robustness(out, per_seed, a.methods, baselines)
    return rows


BASELINE_NOTE = ("The trivial baseline (experiments/baselines.py: it never looks at the image, so the image attack "
                 "cannot move it; it is drawn unattacked under the text attack too) is scored on the whole test split.")


def with_baselines(rows, baselines):
    """The table's rows with each (attack, task)'s trivial baseline first."""
    out, seen = [], set()
    for row in rows:
        if tuple(row[:2]) not in seen and row[1] in baselines:
            seen.add(tuple(row[:2]))
            out.append([*row[:2], f"trivial baseline: {DESCRIPTION[row[1]]}", f"{baselines[row[1]]:.4f}",
                        *["-"] * (len(row) - 4)])
        out.append(row)
    return out


def plot_robustness(out, per_seed, methods, baselines):
    """A panel per attack and task: each method's score against epsilon (and the claim's matched pair), with the
    trivial baseline."""
    panels = {}
    for key, by_eps in per_seed.items():
        attack, task, name = key.split("/")
        if name in methods or name == MATCHED.format("prompt"):
            eps = sorted(by_eps, key=float)
            panel = panels.setdefault((attack, task), dict(
                title=f"FGSM on the {attack} ({task})", xlabel="epsilon", ylabel=f"test {TASKS[task]['metric']}",
                series={}, baseline=baselines[task]))
            panel["series"][name] = Series([float(e) for e in eps], [by_eps[e] for e in eps])
    plot_grid(os.path.join(out, "robustness.png"), list(panels.values()))


def remake(out, argv):
    """Table (with the baselines) and plot again from results.json, without attacking anything."""
    with open(os.path.join(out, "results.json")) as f:
        stored = json.load(f)
    with open(os.path.join(out, "results.md")) as f:
        title, note = [part.strip() for part in f.read().split("\n\n")[:2]]
    tasks = list(dict.fromkeys(key.split("/")[1] for key in stored["per_seed"]))
    baselines = {task: baseline(task, "test") for task in tasks}
    rows = [r for r in stored["rows"] if not r[2].startswith("trivial baseline")]
    methods = list(dict.fromkeys(r[2] for r in rows if not r[2].startswith("finetune at")))
    save_results(out, title.lstrip("# "), with_baselines(rows, baselines), stored["header"],
                 note if BASELINE_NOTE in note else f"{note} {BASELINE_NOTE}",
                 remade_command_line(out, "robustness.py", argv),
                 extra={**{k: v for k, v in stored.items() if k not in ("header", "rows")}, "baselines": baselines})
    plot_robustness(out, stored["per_seed"], methods, baselines)


if __name__ == "__main__":
    main()
