"""This project's model against the official OFA implementation, side by side on this machine, in one run.

    python benchmarks/official_side_by_side.py [--size base --image-size 480 --batch 2] [--repetitions 3] [--steps 5]
                                               [--ofa-repo PATH] [--json FILE]

The official code is OFA-Sys/OFA (--ofa-repo: a git directory, bare mirrors included, or a checkout;
default $OFA_REPO or /work/.mirror/OFA-Sys+OFA/repo). At run time its `models/`, `data/` and `utils/`
folders are extracted into a temporary folder (nothing of OFA is copied into this repository) and OFA's
model code, `models/ofa/` (unify_transformer.py and the OFAModel of ofa.py), is imported from there
against the installed fairseq; OFA's own bundled fairseq fork is not used. Each side runs in its own
fresh process (multiprocessing spawn): the two register conflicting fairseq models (both are "ofa").

Configuration: --size (default tiny; OFA's `ofa_SIZE` arch, e.g. ofa_base: 768-d, 12 heads, 6+6 layers, FFN 3072,
resnet101; ours `--arch ofa_prompt_SIZE`, the same sizes, checked field by field against the official Namespace),
with
the switches of every released OFA model (--encoder/decoder-normalize-before, --layernorm-embedding,
--patch/code-layernorm-embedding, --add-type-embedding, --scale-attn/fc/heads, --disable-entangle,
shared embeddings), dropout 0.1, attention dropout 0, no drop-path; a fairseq Dictionary of 59,457
symbols (OFA's vocabulary size), --image-size images (default 256; users train at 480), --batch (default 4),
20 source and 12 target tokens; prompt
tuning with OFA's flags --encoder-prompt --decoder-prompt --encoder/decoder-prompt-type prefix
--encoder/decoder-prompt-length 64.

Same weights on both sides: the official model is built once with a fixed seed (its LayerNorm
parameters and prompts are then re-drawn so that every component moves the output: BERT init leaves
prompts at std 0.02 and LayerNorms at 1/0), its state dict is saved, and every run of either side
loads it (the finetuning runs without the prompt tensors). Before timing, one eval forward of each side
on the same batch is compared (max |logits difference|, with and without prompts), as are the beam-5
hypotheses.

Figures, each configuration in a fresh process, official and ours interleaved (official prompt, ours
prompt, ours with cached image features, official finetune, ours finetune) --repetitions times;
medians over repetitions with min-max, and medians of the paired ours/official ratios; load average:
1. prompt-tuning step: forward + cross-entropy + backward + Adam step on the trainable parameters,
   median of --steps after one warm-up step. Official: what OFA's build_model leaves trainable with a
   prompt flag (only the prompt encoders; the ResNet stays in train mode, as in OFA); ours: what the
   model sets itself for prompt tuning (only the prompts; the frozen ResNet in eval mode);
2. finetuning step: no prompts, every parameter trainable;
3. peak memory growth of a step: peak RSS during the steps minus RSS before them (peak reset with
   /proc/self/clear_refs after the warm-up), for both;
4. beam-5 generation of exactly 12 tokens (min_len = max_len_b = 12, both starting from <s>), with and
   without prompts, median of --steps after one warm-up: official with OFA's models/sequence_generator.py,
   ours with fairseq's SequenceGenerator (as benchmarks/performance.py);
plus "ours, cached image features": our prompt step with the ResNet's features served by
ImageFeatureCache (--image-feature-cache, epochs after the first), against the official prompt step.
BENCH_THREADS sets torch's threads in every run (default: torch's).
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import ratio, reports_errors, run, set_threads, shown, timed_beam, timed_steps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OFA_REPO = "/work/.mirror/OFA-Sys+OFA/repo"
OFA_FOLDERS = ("models", "data", "utils")  # OFA's model code, and what its sequence generator imports

# the size options reach the spawned worker processes through the environment (main() sets it)
SIZE = os.environ.get("BENCH_SIZE", "tiny")
SHAPE = dict(image=int(os.environ.get("BENCH_IMAGE_SIZE", 256)), batch=int(os.environ.get("BENCH_BATCH", 4)),
             vocab=59457, src=20, tgt=12)
PROMPT_LENGTH = 64
BEAM, GEN_LEN = 5, 12
SEED = 0
# OFA's flags (its run scripts'): the switches every released model uses, and the regularization
OFA_FLAGS = ["--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
             "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding",
             "--code-layernorm-embedding", "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads",
             "--disable-entangle", "--dropout=0.1", "--attention-dropout=0.0", "--resnet-drop-path-rate=0.0",
             "--encoder-drop-path-rate=0.0", "--decoder-drop-path-rate=0.0"]
PROMPT_FLAGS = ["--encoder-prompt", "--decoder-prompt", "--encoder-prompt-type=prefix", "--decoder-prompt-type=prefix",
                f"--encoder-prompt-length={PROMPT_LENGTH}", f"--decoder-prompt-length={PROMPT_LENGTH}"]
# ours: ofa_prompt_tiny sets the sizes and the released switches; the rest as the flags above
OURS_ARGS = dict(arch=f"ofa_prompt_{SIZE}", dropout=0.1, attention_dropout=0.0, resnet_drop_path_rate=0.0,
                 encoder_drop_path_rate=0.0, decoder_drop_path_rate=0.0)
OURS_PROMPT_ARGS = dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_type="prefix",
                        decoder_prompt_type="prefix", encoder_prompt_length=PROMPT_LENGTH,
                        decoder_prompt_length=PROMPT_LENGTH)
# fields of our config that must equal the official model's Namespace
COMPARED = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
            "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads", "resnet_type",
            "activation_fn", "dropout", "attention_dropout", "activation_dropout", "encoder_drop_path_rate",
            "decoder_drop_path_rate", "resnet_drop_path_rate", "encoder_normalize_before", "decoder_normalize_before",
            "layernorm_embedding", "patch_layernorm_embedding", "code_layernorm_embedding", "add_type_embedding",
            "no_scale_embedding", "scale_attn", "scale_fc", "scale_heads", "scale_resids", "attn_scale_factor",
            "token_bucket_size", "image_bucket_size", "disable_entangle", "entangle_position_embedding",
            "share_decoder_input_output_embed", "share_all_embeddings", "freeze_resnet", "sync_bn",
            "max_source_positions", "max_target_positions", "encoder_prompt", "decoder_prompt",
            "encoder_prompt_length", "decoder_prompt_length", "encoder_prompt_projection",
            "decoder_prompt_projection")
# what OFA's model code assumes (getattr defaults) for options its Namespace may lack (OFATask's)
OFFICIAL_ABSENT = dict(freeze_resnet=False)


# --- shared by both sides ---------------------------------------------------------------------------------

def dictionary():
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(SHAPE["vocab"] - len(d)):
        d.add_symbol(str(i))
    assert len(d) == SHAPE["vocab"]
    return d


def make_batch():
    g = torch.Generator().manual_seed(0)
    b, v = SHAPE["batch"], SHAPE["vocab"]
    return dict(src_tokens=torch.randint(4, v, (b, SHAPE["src"]), generator=g),
                src_lengths=torch.full((b,), SHAPE["src"]),
                prev_output_tokens=torch.randint(4, v, (b, SHAPE["tgt"]), generator=g),
                patch_images=torch.rand(b, 3, SHAPE["image"], SHAPE["image"], generator=g) * 2 - 1,
                patch_masks=torch.ones(b, dtype=torch.bool))


def without_prompts(state_dict):
    return {k: v for k, v in state_dict.items() if "_prompt_encoder." not in k}


def net_input(batch):
    return {"net_input": {k: v for k, v in batch.items() if k != "prev_output_tokens"}}


# --- the official side (a fresh process; OFA's `models`, `data`, `utils` packages importable) -------------

def import_official(ofa_dir):
    """OFA's OFAModel, its architecture and base-architecture functions and its SequenceGenerator (fairseq's
    if OFA's does not import), with a description of the generator; from the extracted code, against the
    installed fairseq."""
    if ofa_dir not in sys.path:
        sys.path.insert(0, ofa_dir)
    # OFA's models/__init__.py imports models.ofa, which also imports ofa_speech; they import as they are
    # with fairseq-fixed 0.12.3.1 on Python 3.11, so no stubs are needed here. Should one fail, stub it here
    # (this process only), e.g. sys.modules["models.ofa.ofa_speech"] = types.ModuleType(...), with the reason.
    from models.ofa import ofa as official_ofa
    from models.ofa.ofa import OFAModel
    from models.ofa.unify_transformer import base_architecture
    try:
        from models.sequence_generator import SequenceGenerator
        generator = "OFA's models/sequence_generator.py"
    except Exception as e:  # noqa: BLE001  (then fairseq's, and the report says so)
        from fairseq.sequence_generator import SequenceGenerator
        generator = f"fairseq's (OFA's did not import: {type(e).__name__}: {e})"
    return OFAModel, getattr(official_ofa, f"ofa_{SIZE}_architecture"), base_architecture, SequenceGenerator, generator


def official_args(ofa_dir, prompt):
    """The model Namespace OFA's train.py would build from its flags: OFAModel.add_args into a parser whose
    unset options are absent (fairseq's model-specific group uses argparse.SUPPRESS), the task's options
    that the model reads, then the arch function and the unify_transformer defaults."""
    OFAModel, size_architecture, base, _, _ = import_official(ofa_dir)
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    OFAModel.add_args(parser)
    args = parser.parse_args(OFA_FLAGS + (PROMPT_FLAGS if prompt else []))
    args.arch = f"ofa_{SIZE}"
    # OFATask's options that the model reads (--patch-image-size; fairseq's max positions)
    args.patch_image_size, args.max_source_positions, args.max_target_positions = SHAPE["image"], 1024, 1024
    size_architecture(args)
    base(args)
    return args


def official_model(ofa_dir, prompt, weights=None):
    OFAModel = import_official(ofa_dir)[0]
    args = official_args(ofa_dir, prompt)
    d = dictionary()
    torch.manual_seed(SEED)
    model = OFAModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    if weights is not None:
        state = torch.load(weights, weights_only=True)
        model.load_state_dict(state if prompt else without_prompts(state), strict=True)
    return model, d, args


def official_generator(ofa_dir, model, d):
    SequenceGenerator = import_official(ofa_dir)[3]
    gen = SequenceGenerator([model], d, beam_size=BEAM, max_len_a=0, max_len_b=GEN_LEN, min_len=GEN_LEN)
    return gen


def json_safe(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (bool, int, float, str, type(None)))}


@reports_errors
def official_setup(ofa_dir, workdir, queue):
    """Build the official prompt model with a fixed seed, re-draw its LayerNorms and prompts (seeded),
    save the state dict; record the eval logits and beam hypotheses of it and of its no-prompt twin."""
    set_threads()
    model, d, args = official_model(ofa_dir, prompt=True)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_prompt_encoder." in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("c_attn"):  # --scale-heads' per-head scales (ones)
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.dim() == 1 and ("norm" in name or "_ln" in name or "layernorm" in name):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weights = os.path.join(workdir, f"official_ofa_{SIZE}.pt")
    torch.save(state, weights)
    batch = make_batch()
    reference = {}
    for prompt in (True, False):
        m = model if prompt else official_model(ofa_dir, prompt=False, weights=weights)[0]
        m.eval()
        with torch.no_grad():
            logits = m(**batch)[0]
            hypos = official_generator(ofa_dir, m, d).generate([m], net_input(batch))
        reference[prompt] = dict(logits=logits, tokens=[[h["tokens"] for h in hs] for hs in hypos])
    torch.save(reference, os.path.join(workdir, "official_outputs.pt"))
    generator = import_official(ofa_dir)[4]
    queue.put(dict(weights=weights, args=json_safe(args), generator=generator,
                   prompt_params=sum(v.numel() for k, v in state.items() if "_prompt_encoder." in k)))


@reports_errors
def official_run(ofa_dir, weights, prompt, steps, queue):
    set_threads()
    model, d, _ = official_model(ofa_dir, prompt, weights)
    batch = make_batch()
    out = timed_steps(model, batch, steps)
    model.eval()
    gen = official_generator(ofa_dir, model, d)
    sample = net_input(batch)
    out.update(timed_beam(lambda: gen.generate([model], sample), steps))
    queue.put(out)


# --- this project's side (a fresh process) ---------------------------------------------------------------

def our_model(prompt, weights, official=None):
    # first, before fairseq: the plugin's load() imports fairseq with its import notices silenced and the root
    # logger's level kept (fairseq's import sets it to DEBUG)
    import ofa_prompt

    ofa_prompt.load()  # registers the plugin with fairseq
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from ofa_prompt.models.ofa import OFAModel

    args = argparse.Namespace(**OURS_ARGS, **(OURS_PROMPT_ARGS if prompt else {}))
    ARCH_CONFIG_REGISTRY[args.arch](args)
    d = dictionary()
    torch.manual_seed(SEED)
    model = OFAModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    if official is not None:  # the same configuration as the official model's Namespace
        theirs = {**OFFICIAL_ABSENT, **official}
        wrong = [f"{k}: ours {getattr(model.cfg, k)!r}, official {theirs.get(k)!r}" for k in COMPARED
                 if getattr(model.cfg, k) != theirs.get(k)]
        if wrong:
            raise ValueError("configurations differ: " + "; ".join(wrong))
    state = torch.load(weights, weights_only=True)
    model.load_state_dict(state if prompt else without_prompts(state), strict=True)
    return model, d


def our_generator(model, d):
    from fairseq.sequence_generator import SequenceGenerator

    gen = SequenceGenerator([model], d, beam_size=BEAM, max_len_a=0, max_len_b=GEN_LEN, min_len=GEN_LEN)
    # OFA's generator starts every hypothesis with <s> (fairseq's with </s>): the same here, so both decode
    # the same sequences
    return lambda sample: gen.generate([model], sample, bos_token=d.bos())


@reports_errors
def our_check(weights, workdir, official_args_, queue):
    """Our logits and beam hypotheses against the official ones, same weights, same batch."""
    set_threads()
    reference = torch.load(os.path.join(workdir, "official_outputs.pt"), weights_only=True)
    batch = make_batch()
    out = {}
    for prompt in (True, False):
        model, d = our_model(prompt, weights, official_args_ if prompt else None)  # (checked once)
        model.eval()
        ref = reference[prompt]
        with torch.no_grad():
            logits = model(**batch)[0]
            hypos = our_generator(model, d)(net_input(batch))
        same = sum(torch.equal(h["tokens"], t) for hs, ts in zip(hypos, ref["tokens"]) for h, t in zip(hs, ts))
        out[prompt] = dict(max_abs_diff=(logits - ref["logits"]).abs().max().item(),
                           max_abs_logit=ref["logits"].abs().max().item(),
                           same_hypotheses=same, hypotheses=sum(len(ts) for ts in ref["tokens"]))
    # how far the prompts move the official logits: the scale on which the agreement above is small
    out["prompt_effect"] = (reference[True]["logits"] - reference[False]["logits"]).abs().max().item()
    queue.put(out)


@reports_errors
def our_run(weights, prompt, steps, cache, queue):
    set_threads()
    from ofa_prompt.models.image_cache import ImageFeatureCache

    model, d = our_model(prompt, weights)
    batch = make_batch()
    if cache:  # every image's features cached after the warm-up step (epochs after the first)
        model.encoder.image_cache = ImageFeatureCache(4096)
        batch["image_keys"] = torch.arange(2 * SHAPE["batch"]).view(SHAPE["batch"], 2)
    out = timed_steps(model, batch, steps)
    if not cache:
        model.eval()
        generate, sample = our_generator(model, d), net_input(batch)
        out.update(timed_beam(lambda: generate(sample), steps))
    queue.put(out)


# --- the driver ------------------------------------------------------------------------------------------

def extract_ofa(repo, dest):
    """OFA's code into dest: from a checkout's folders, or `git archive` of a git directory's HEAD.
    Returns a description of what was extracted (the commit where known)."""
    if os.path.isfile(os.path.join(repo, "models", "ofa", "unify_transformer.py")):  # a checkout
        for folder in OFA_FOLDERS:
            shutil.copytree(os.path.join(repo, folder), os.path.join(dest, folder))
        git = ["git", "-C", repo]
    else:
        git = ["git", f"--git-dir={repo}"]
        archive = subprocess.run(git + ["archive", "--format=tar", "HEAD", *OFA_FOLDERS], capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"cannot read OFA's code from {repo}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            try:
                tar.extractall(dest, filter="data")
            except TypeError:  # Python without extraction filters (before 3.8.17 / 3.11.4)
                tar.extractall(dest)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(os.path.join(dest, "models", "ofa", "unify_transformer.py")):
        raise SystemExit(f"{repo} has no models/ofa/unify_transformer.py: not an OFA repository")
    return commit or "unknown commit"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ofa-repo", default=os.environ.get("OFA_REPO", DEFAULT_OFA_REPO),
                    help="OFA-Sys/OFA: a git directory (a bare mirror too) or a checkout (default: $OFA_REPO or "
                         f"{DEFAULT_OFA_REPO})")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (and beam searches) per run")
    ap.add_argument("--repetitions", type=int, default=3, help="interleaved repetitions of every configuration")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--size", default="tiny", choices=["tiny", "medium", "base", "large", "huge"],
                    help="OFA's size (ofa_SIZE on both sides); users train base and large")
    ap.add_argument("--image-size", type=int, default=256, help="square images of this many pixels (OFA: 480)")
    ap.add_argument("--batch", type=int, default=4, help="samples a batch")
    a = ap.parse_args()
    os.environ.update(BENCH_SIZE=a.size, BENCH_IMAGE_SIZE=str(a.image_size), BENCH_BATCH=str(a.batch))
    SHAPE.update(image=a.image_size, batch=a.batch)
    if not os.path.isdir(a.ofa_repo):
        raise SystemExit(f"OFA repository not found at {a.ofa_repo}: give it with --ofa-repo PATH or OFA_REPO")
    workdir = tempfile.mkdtemp(prefix="ofa_side_by_side_")
    try:
        ofa_dir = os.path.join(workdir, "ofa")
        os.makedirs(ofa_dir)
        commit = extract_ofa(a.ofa_repo, ofa_dir)
        print(f"official OFA: {a.ofa_repo} at {commit}, extracted to {ofa_dir}", file=sys.stderr, flush=True)
        setup = run(official_setup, ofa_dir, workdir)
        weights = setup["weights"]
        check = run(our_check, weights, workdir, setup["args"])
        print(f"official sequence generator: {setup['generator']}", file=sys.stderr, flush=True)

        configs = {  # name: (function, arguments)
            "official prompt": (official_run, (ofa_dir, weights, True, a.steps)),
            "ours prompt": (our_run, (weights, True, a.steps, False)),
            "ours prompt, cached features": (our_run, (weights, True, a.steps, True)),
            "official finetune": (official_run, (ofa_dir, weights, False, a.steps)),
            "ours finetune": (our_run, (weights, False, a.steps, False)),
        }
        res, loads = {name: [] for name in configs}, []
        for r in range(a.repetitions):
            for name, (fn, args) in configs.items():
                res[name].append(run(fn, *args))
                loads.append(os.getloadavg()[0])
            print(f"  repetition {r + 1}/{a.repetitions} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def col(name, key):
        return [r[key] for r in res[name]]

    print(f"\nofa_{a.size}, vocabulary {SHAPE['vocab']}, {SHAPE['image']}px images, batch {SHAPE['batch']}, "
          f"{SHAPE['src']} source / {SHAPE['tgt']} target tokens, prompts {PROMPT_LENGTH} on encoder and decoder; "
          f"official OFA {commit[:7]}; torch {torch.__version__}, "
          f"{os.environ.get('BENCH_THREADS', torch.get_num_threads())} threads")
    print("same weights: max |logits ours - official| = "
          f"{check[True]['max_abs_diff']:.2e} with prompts, {check[False]['max_abs_diff']:.2e} without "
          f"(max |logit| {check[True]['max_abs_logit']:.2f} / {check[False]['max_abs_logit']:.2f}; the prompts "
          f"move the official logits by up to {check['prompt_effect']:.2f}); beam-5 "
          f"hypotheses identical: {check[True]['same_hypotheses']}/{check[True]['hypotheses']} with prompts, "
          f"{check[False]['same_hypotheses']}/{check[False]['hypotheses']} without")
    print(f"medians of {a.repetitions} interleaved repetitions (min-max), each the median of {a.steps} steps after "
          f"a warm-up; ratios: medians of the paired ours/official ratios; load average "
          f"{min(loads):.2f}-{max(loads):.2f}")
    print("\n| figure | official | ours | ours / official |")
    print("|---|---|---|---|")
    rows = []
    for what, key in (("wall", "ms"), ("CPU", "cpu_ms")):
        rows += [(f"prompt-tuning step, {what} (ms)", "official prompt", "ours prompt", f"step_{key}", 0),
                 (f"finetuning step, {what} (ms)", "official finetune", "ours finetune", f"step_{key}", 0),
                 (f"beam-5 generation, 12 tokens, with prompts, {what} (ms)", "official prompt", "ours prompt",
                  f"beam5_{key}", 0),
                 (f"beam-5 generation, 12 tokens, no prompts, {what} (ms)", "official finetune", "ours finetune",
                  f"beam5_{key}", 0),
                 (f"ours, cached image features: prompt-tuning step, {what} (ms)", "official prompt",
                  "ours prompt, cached features", f"step_{key}", 0)]
    for method in ("prompt", "finetune"):
        rows += [(f"peak memory growth of a {method} step (MB)", f"official {method}", f"ours {method}",
                  "mem_growth_mb", 0),
                 (f"peak RSS during {method} steps (MB)", f"official {method}", f"ours {method}", "peak_rss_mb", 0)]
    for label, off, ours, key, digits in rows:
        print(f"| {label} | {shown(col(off, key), digits)} | {shown(col(ours, key), digits)} | "
              f"{ratio(col(ours, key), col(off, key))} |")
    for name in ("official prompt", "ours prompt", "official finetune", "ours finetune"):
        t = res[name][0]
        print(f"trainable, {name}: {t['trainable']:,} of {t['total']:,} ({100 * t['trainable'] / t['total']:.2f}%)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(commit=commit, check={str(k): v for k, v in check.items()}, results=res, loads=loads,
                           official_generator=setup["generator"]), f, indent=1)


if __name__ == "__main__":
    main()
