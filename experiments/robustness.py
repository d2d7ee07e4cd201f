"""The paper's adversarial analysis in miniature: FGSM on the image (optionally on the text
embeddings) at several epsilons, for the checkpoints of each tuning method.

    python experiments/robustness.py [--task snli_ve] [--from docs/compare_methods] [--text] [--quick]

x_adv = clip(x + eps * sign(grad_x loss), -1, 1) with the teacher-forced loss of the reference answer;
images live in [-1, 1] (OFA's normalization). Needs the checkpoints of compare_methods.py.
"""
import os
import sys
from argparse import Namespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import METHODS, REPO, TASKS, cli, ensure_backbone, log, plot, save_results  # noqa: E402

from fairseq import checkpoint_utils  # noqa: E402


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


def score(ckpt: str, task_name: str, eps_list, on_text: bool, max_batches: int):
    data = os.path.join(os.environ["DEMO_DATA"], f"downstream_{TASKS[task_name]['file']}_test.tsv")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": data})
    model = models[0].eval()
    task.load_dataset("test")
    ds = task.datasets["test"]
    generator = task.build_generator([model], Namespace(beam=5, max_len_b=40))
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


def main(argv=None):
    ap = cli(__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="snli_ve", choices=list(TASKS))
    ap.add_argument("--from", dest="source", help="compare_methods.py output folder with runs/<task>_<method>/")
    ap.add_argument("--eps", nargs="+", type=float, default=[0.0, 0.01, 0.02, 0.05, 0.1])
    ap.add_argument("--text", action="store_true", help="attack the text embeddings instead of the image")
    ap.add_argument("--max-batches", type=int, default=4, help="test batches of 32 per epsilon")
    a = ap.parse_args(argv)
    ensure_backbone(a.quick)
    source = a.source or os.path.join(REPO, ".cache/experiments/compare_methods" if a.quick else "docs/compare_methods")
    out = a.out or os.path.join(REPO, ".cache/experiments/robustness" if a.quick else "docs/robustness")
    os.makedirs(out, exist_ok=True)
    series, rows = {}, []
    for method in METHODS:
        ckpt = os.path.join(source, "runs", f"{a.task}_{method}", "checkpoint_best.pt")
        if not os.path.isfile(ckpt):
            log(f"skipping {method}: no {ckpt} (run compare_methods.py first)")
            continue
        result = score(ckpt, a.task, a.eps, a.text, 1 if a.quick else a.max_batches)
        series[method] = (a.eps, [result[e] for e in a.eps])
        rows.append([method] + [f"{result[e]:.4f}" for e in a.eps] + [f"{result[a.eps[-1]] - result[a.eps[0]]:+.4f}"])
        log(f"{method}: " + ", ".join(f"eps {e}: {result[e]:.4f}" for e in a.eps))
    if not rows:
        raise SystemExit(f"no checkpoints under {source}/runs: run experiments/compare_methods.py first")
    target = "text embeddings" if a.text else "image"
    save_results(out, f"FGSM robustness ({a.task}, {target})", rows,
                 ["method"] + [f"eps {e}" for e in a.eps] + ["change"],
                 f"FGSM on the {target} of the {a.task} test split ({TASKS[a.task]['metric']}), checkpoints of "
                 f"compare_methods.py; images in [-1, 1].",
                 "python experiments/robustness.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    plot(os.path.join(out, f"robustness_{a.task}_{'text' if a.text else 'image'}.png"),
         f"FGSM on the {target} ({a.task})", series, "epsilon", TASKS[a.task]["metric"])


if __name__ == "__main__":
    main()
