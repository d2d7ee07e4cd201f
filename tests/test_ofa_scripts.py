"""OFA's run scripts, ported (scripts/ofa/): each trains with OFA's own option set through stock fairseq-train
and evaluates through stock fairseq-generate as OFA's evaluate scripts do (data, BPE and columns in
--model-overrides, --results-path). On OFA's folder layout, with OFA-format data: URL-safe base64 images,
the real GPT-2 BPE, a pickled answer dictionary. Only the device (--cpu), sizes and a 2-update budget differ."""
import json
import os
import pickle
import shutil
import subprocess

import pytest
import torch

import tiny_data
from conftest import BPE, REPO

pytestmark = pytest.mark.slow

SCRIPTS = REPO / "scripts" / "ofa"
MICRO = ("--encoder-layers=2 --decoder-layers=2 --encoder-embed-dim=32 --decoder-embed-dim=32 "
         "--encoder-ffn-embed-dim=64 --decoder-ffn-embed-dim=64 --encoder-attention-heads=2 "
         "--decoder-attention-heads=2 --resnet-type=resnet18")
FILES = {  # OFA's dataset/ layout: (folder, task, files)
    "refcoco": ("refcoco_data", ["refcoco_train", "refcoco_val", "refcoco_testA"]),
    "caption": ("caption_data", ["caption_stage1_train", "caption_stage2_train", "caption_val", "caption_test"]),
    "snli_ve": ("snli_ve_data", ["snli_ve_train", "snli_ve_dev", "snli_ve_test"]),
    "vqa_gen": ("vqa_data", ["vqa_train", "vqa_val"]),
}


@pytest.fixture(scope="module")
def ofa_dir(tmp_path_factory):
    if not (BPE / "encoder.json").is_file():
        pytest.skip(f"OFA's BPE files not found at {BPE}")
    root = tmp_path_factory.mktemp("OFA")
    shutil.copytree(BPE, root / "utils" / "BPE")
    for task, (folder, names) in FILES.items():
        (root / "dataset" / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            # OFA's column layouts; caption's columns 0 and 1 are both ids (stage 2 reads 1, stage 1 reads 0)
            rows = tiny_data.rows(task, 8 if "train" in name else 4, seed=i, urlsafe=True)
            tiny_data.write(root / "dataset" / folder / f"{name}.tsv", rows)
    (root / "dataset" / "caption_data" / "cider_cached_tokens").mkdir()
    for name in ("coco-valid-words.p", "coco-train-words.p"):  # must exist; never unpickled
        (root / "dataset" / "caption_data" / "cider_cached_tokens" / name).write_bytes(pickle.dumps({}))
    with open(root / "dataset" / "vqa_data" / "trainval_ans2label.pkl", "wb") as f:
        pickle.dump({c: i for i, c in enumerate(tiny_data.COLORS)}, f)
    (root / "checkpoints").mkdir()
    return root


def launch(script, ofa_dir, extra="", **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OFA_DIR": str(ofa_dir), "ARCH": "ofa_tiny", "DEVICE_ARGS": "--cpu",
                   "PATCH_IMAGE_SIZE": "32", "BATCH_SIZE": "2", "UPDATE_FREQ": "2", "EXTRA_ARGS": extra, **env}
    return subprocess.run(["bash", str(SCRIPTS / script)], cwd=ofa_dir, env=environment, capture_output=True, text=True)


def run(script, ofa_dir, extra="", **env):
    p = launch(script, ofa_dir, extra, **env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    return p.stdout + p.stderr


def train(script, ofa_dir, save_dir, extra="", **env):
    log = run(script, ofa_dir, f"--max-update=2 {MICRO} {extra}", SAVE_DIR=str(ofa_dir / save_dir), **env)
    assert "num_updates 2" in log, log[-2000:]
    return ofa_dir / save_dir / "checkpoint_last.pt"


def refused(script, ofa_dir, **env) -> str:
    """The one error line of a run that must stop at start-up (no traceback)."""
    p = launch(script, ofa_dir, f"--max-update=2 {MICRO}", **env)
    errors = [line for line in p.stderr.splitlines() if ": error: " in line]
    assert p.returncode != 0 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-4000:]
    return errors[0]


def promote(checkpoint, ofa_dir, name):
    """As OFA's README has it: a stage's best checkpoint copied into checkpoints/ under the name the next stage
    restores."""
    shutil.copy(checkpoint, ofa_dir / "checkpoints" / name)
    return f"checkpoints/{name}"  # relative, as OFA's scripts name it (../../checkpoints/ from run_scripts/TASK)


def predictions(ofa_dir, result_dir, split):
    path = ofa_dir / "results" / result_dir / f"{split}_predict.json"
    with open(path) as f:  # as OFA's coco_eval.py and the VQA server read it
        return json.load(f)


@pytest.fixture(scope="module")
def backbone(ofa_dir):
    """A prompt-less micro OFA to start from, as ofa_tiny.pt would be (OFA's scripts --restore-file it)."""
    checkpoint = train("train_refcoco.sh", ofa_dir, "backbone", METHOD="finetune", RESTORE_FILE="none")
    shutil.copy(checkpoint, ofa_dir / "checkpoints" / "ofa_tiny.pt")
    return ofa_dir / "checkpoints" / "ofa_tiny.pt"


def test_refcoco(ofa_dir, backbone):
    checkpoint = train("train_refcoco.sh", ofa_dir, "refcoco", METHOD="prompt")
    log = run("evaluate_refcoco.sh", ofa_dir, CHECKPOINT=str(checkpoint), SPLIT="refcoco_testA", BATCH_SIZE="4")
    boxes = predictions(ofa_dir, "refcoco", "refcoco_testA")
    assert len(boxes) == 4 and all(len(b["box"]) == 4 for b in boxes), boxes
    assert "Acc@0.5" in (ofa_dir / "results" / "refcoco" / "generate-refcoco_testA.txt").read_text() + log


def test_caption_stage1_then_scst_stage2(ofa_dir, backbone):
    stage1 = train("train_caption_stage1.sh", ofa_dir, "stage1", METHOD="adapter", DROP_WORST_AFTER="1")
    stage2 = train("train_caption_stage2.sh", ofa_dir, "stage2", METHOD="adapter", RESTORE_FILE=str(stage1))
    run("evaluate_caption.sh", ofa_dir, CHECKPOINT=str(stage2), BATCH_SIZE="4")
    captions = predictions(ofa_dir, "caption", "test")
    assert len(captions) == 4 and {"image_id", "caption"} <= captions[0].keys()


def test_snli_ve(ofa_dir, backbone):
    checkpoint = train("train_snli_ve.sh", ofa_dir, "snli_ve", METHOD="bitfit")
    run("evaluate_snli_ve.sh", ofa_dir, CHECKPOINT=str(checkpoint), BATCH_SIZE="4")
    answers = predictions(ofa_dir, "snli_ve", "snli_ve_test")
    assert len(answers) == 4 and all(a["answer"] in ("yes", "no", "maybe") for a in answers), answers


def test_vqa_with_ema_and_its_three_evaluations(ofa_dir, backbone):
    constrained = train("train_vqa.sh", ofa_dir, "vqa", METHOD="prompt", TOTAL_NUM_UPDATES="2", WARMUP_UPDATES="1")
    for mode in ("allcand", "beam"):
        run("evaluate_vqa.sh", ofa_dir, CHECKPOINT=str(constrained), MODE=mode, BATCH_SIZE="4")
        answers = predictions(ofa_dir, f"vqa_val_{mode}", "val")
        assert len(answers) == 4 and {"question_id", "answer"} <= answers[0].keys(), (mode, answers)
        assert all(a["answer"] in tiny_data.COLORS for a in answers), (mode, answers)
    # OFA's evaluate_vqa_unconstrained.sh scores a model trained with --unconstrained-training
    free = train("train_vqa.sh", ofa_dir, "vqa_free", METHOD="prompt", TOTAL_NUM_UPDATES="2", WARMUP_UPDATES="1",
                 UNCONSTRAINED="1")
    run("evaluate_vqa.sh", ofa_dir, CHECKPOINT=str(free), MODE="unconstrained", BATCH_SIZE="4")
    assert len(predictions(ofa_dir, "vqa_val_unconstrained", "val")) == 4


PROMPTS = "encoder.encoder_prompt_encoder.embedding.weight"


def tuned(checkpoint) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def caption_stage1(ofa_dir, backbone):
    """Prompt tuning as a chain of three on OFA's layout: refcoco prompts, promoted to checkpoints/, start caption
    stage 1 (another task's prompts as the starting point, as pretraining-mix prompts would be)."""
    refcoco = train("train_refcoco.sh", ofa_dir, "chain_refcoco", METHOD="prompt")
    start = promote(refcoco, ofa_dir, "refcoco_prompt_best.pt")
    stage1 = train("train_caption_stage1.sh", ofa_dir, "chain_stage1", METHOD="prompt", RESTORE_FILE=start,
                   DROP_WORST_AFTER="1")
    return refcoco, stage1


def test_prompt_tuning_stage1_then_scst_stage2_from_the_renamed_best_checkpoint(ofa_dir, backbone, caption_stage1):
    refcoco, stage1 = caption_stage1
    stage2 = train("train_caption_stage2.sh", ofa_dir, "chain_stage2", METHOD="prompt",
                   RESTORE_FILE=promote(stage1, ofa_dir, "caption_stage1_best.pt"))
    chain = [tuned(c) for c in (refcoco, stage1, stage2)]
    for state in chain:  # every link records the backbone, not the copy it was restored from
        assert state["_ofa_prompt_backbone"]["path"] == str(backbone)
    for before, after in zip(chain, chain[1:]):  # each link starts from the prompts before it (2 updates apart)
        change = (after[PROMPTS] - before[PROMPTS]).abs().max().item()
        assert 0 < change < 0.1, change
    run("evaluate_caption.sh", ofa_dir, CHECKPOINT=str(stage2), BATCH_SIZE="4")
    assert len(predictions(ofa_dir, "caption", "test")) == 4


def test_a_chain_moved_with_its_backbone_is_found_again_with_backbone(ofa_dir, backbone):
    elsewhere, moved = ofa_dir / "elsewhere", ofa_dir / "moved"
    elsewhere.mkdir()
    moved.mkdir()
    shutil.copy(backbone, elsewhere / "ofa_tiny.pt")
    stage1 = train("train_caption_stage1.sh", ofa_dir, "moving_stage1", METHOD="prompt",
                   RESTORE_FILE=str(elsewhere / "ofa_tiny.pt"), DROP_WORST_AFTER="1")
    shutil.move(elsewhere / "ofa_tiny.pt", moved / "ofa_tiny.pt")
    shutil.copy(stage1, moved / "caption_stage1_best.pt")
    line = refused("train_caption_stage2.sh", ofa_dir, METHOD="prompt",
                   RESTORE_FILE=str(moved / "caption_stage1_best.pt"), SAVE_DIR=str(ofa_dir / "moving_refused"))
    assert f"{moved / 'caption_stage1_best.pt'} holds prompts only; the backbone it records, " \
           f"{elsewhere / 'ofa_tiny.pt'}, is missing" in line and "--backbone NEW.pt" in line, line
    stage2 = train("train_caption_stage2.sh", ofa_dir, "moving_stage2", f"--backbone={moved / 'ofa_tiny.pt'}",
                   METHOD="prompt", RESTORE_FILE=str(moved / "caption_stage1_best.pt"))
    assert tuned(stage2)["_ofa_prompt_backbone"]["path"] == str(moved / "ofa_tiny.pt")


def test_a_prompt_file_given_as_a_checkpoint_is_named_in_one_line(ofa_dir, caption_stage1):
    prompts = ofa_dir / "checkpoints" / "caption_prompts.safetensors"
    subprocess.run(["python3", "-m", "ofa_prompt.prompt_file", "export", str(caption_stage1[1]), str(prompts)],
                   check=True, capture_output=True)
    line = refused("train_caption_stage2.sh", ofa_dir, METHOD="prompt", RESTORE_FILE=str(prompts),
                   SAVE_DIR=str(ofa_dir / "kind_refused"))
    assert f"--restore-file {prompts} is a prompt file" in line and "--prompt-init FILE" in line, line
    p = launch("evaluate_caption.sh", ofa_dir, CHECKPOINT=str(prompts))
    errors = [x for x in p.stderr.splitlines() if ": error: " in x]
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(errors) == 1 and f"--path {prompts} is a prompt file" in errors[0] and "--prompt-file" in errors[0]
