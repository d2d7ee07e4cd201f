"""Stock fairseq-train and fairseq-generate from an official checkpoint (../shared/ofa_reference):
restoring a prompt-less backbone, prompt-only checkpoints, exact resumption after SIGKILL, and
data-parallel training with gloo on CPU."""
import os
import random
import re
import signal
import subprocess
import time

import pytest
import torch

import tiny_data
from conftest import BIN, MICRO_SIZES, as_options, cold, reference_caption_args as task_args
from ofa_prompt import load_model
from ofa_prompt.checkpoint import BACKBONE_KEY, read_checkpoint

pytestmark = pytest.mark.slow  # fairseq-train / fairseq-generate runs end to end


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data.reference_captions(tmp_path_factory.mktemp("refdata") / "caption.tsv")


def train_args(data, reference, save_dir, *extra):
    return [f"{BIN}/fairseq-train", f"{data},{data}", *task_args(reference),
            "--arch", "ofa_prompt_base", *as_options(MICRO_SIZES),
            "--encoder-prompt", "--decoder-prompt", "--encoder-prompt-length", "8", "--decoder-prompt-length", "8",
            "--criterion", "adjust_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "0.03",
            "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
            "--disable-validation", "--seed", "3", "--save-dir", str(save_dir), *extra]


def run(cmd, timeout=300):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def prompts(path):
    return {k: v for k, v in read_checkpoint(str(path))["model"].items() if k != BACKBONE_KEY}


def test_restore_prompt_less_backbone_and_generate(data, reference, tmp_path):
    log = run(train_args(data, reference, tmp_path, "--restore-file", str(reference / "plain.pt"), "--reset-optimizer",
                         "--reset-dataloader", "--reset-meters", "--batch-size", "4", "--max-update", "3"))
    assert "initialized 2 tensors that the checkpoint lacks" in log and "tuning method prompt: 4096 of" in log
    ckpt = tmp_path / "checkpoint_last.pt"
    saved = read_checkpoint(str(ckpt))
    assert set(saved["model"]) == {BACKBONE_KEY, "encoder.encoder_prompt_encoder.embedding.weight",
                                   "decoder.decoder_prompt_encoder.embedding.weight"}
    assert set(saved["last_optimizer_state"]["state"]) == {0, 1}  # Adam state of the two prompt tensors only
    model, backbone = load_model(str(ckpt)), read_checkpoint(str(reference / "plain.pt"))["model"]
    ours = model.full_state_dict()
    assert all(torch.equal(ours[k], v.float()) for k, v in backbone.items() if k in ours)  # the backbone never moved
    out = run([f"{BIN}/fairseq-generate", str(data), *task_args(reference), "--path", str(ckpt), "--gen-subset", "test",
               "--beam", "5", "--max-len-b", "5", "--batch-size", "4", "--scoring", "ofa_caption"])
    assert "Generate test with beam=5: CIDEr:" in out and "(10 samples)" in out


def test_official_finetuned_style_checkpoint_generates(data, reference):
    out = run([f"{BIN}/fairseq-generate", str(data), *task_args(reference), "--path", str(reference / "prompt.pt"),
               "--gen-subset", "test", "--beam", "5", "--max-len-b", "5", "--batch-size", "4",
               "--scoring", "ofa_caption"])
    assert "Generate test with beam=5: CIDEr:" in out


def test_sigkill_then_resume_is_bit_identical(data, reference, tmp_path):
    start = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4", "--max-update", "12",
             "--save-interval-updates", "1", "--keep-interval-updates", "1"]
    run(train_args(data, reference, tmp_path / "straight", *start))
    killed = tmp_path / "killed"
    # A random moment well inside the run: after a random update's log line plus a random delay, at
    # least 5 updates (each with a checkpoint write) before the end; a fixed sleep could outlast a fast run.
    rng = random.Random()
    kill_after = rng.randint(2, 7)  # checkpoint kill_after - 1 is on disk by then
    proc = subprocess.Popen(cold(train_args(data, reference, killed, *start)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if re.search(rf"train_inner .*num_updates={kill_after}\b", line):
            time.sleep(rng.uniform(0, 0.05))
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # fairseq writes checkpoint_last.pt.tmp and renames it: whatever the moment, the file reads back whole
    resumed = read_checkpoint(str(killed / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert kill_after - 1 <= resumed < 12, f"killed after update {kill_after}, checkpoint at {resumed}"
    log = run(train_args(data, reference, killed, *start))
    assert f"@ {resumed} updates" in log
    a, b = prompts(tmp_path / "straight" / "checkpoint_last.pt"), prompts(killed / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_after_the_update_with_a_checkpoint_and_resumes(data, reference, tmp_path):
    """As a scheduler pre-empting a job: no update is lost, exit 0, the same command continues."""
    start = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4", "--max-update", "10",
             "--save-interval-updates", "100"]  # no checkpoint but the one SIGTERM asks for
    run(train_args(data, reference, tmp_path / "straight", *start))
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(cold(train_args(data, reference, stopped, *start)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        if re.search(r"train_inner .*num_updates=3\b", line):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0, "".join(log)[-3000:]
    assert any("SIGTERM: stopping after the update under way" in line for line in log)
    saved = read_checkpoint(str(stopped / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert 3 <= saved < 10
    resumed = run(train_args(data, reference, stopped, *start))
    assert f"@ {saved} updates" in resumed
    a, b = prompts(tmp_path / "straight" / "checkpoint_last.pt"), prompts(stopped / "checkpoint_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_logdir_writes_event_files(data, reference, tmp_path):
    """fairseq's --tensorboard-logdir needs the `tensorboard` extra (without it fairseq only warns)."""
    run(train_args(data, reference, tmp_path / "run", "--finetune-from-model", str(reference / "plain.pt"),
                   "--batch-size", "4", "--max-update", "2", "--tensorboard-logdir", str(tmp_path / "tb")))
    assert list((tmp_path / "tb" / "train_inner").glob("events.out.tfevents.*"))


def test_prompt_init_applies_when_training_starts_and_not_on_resume(data, reference, tmp_path):
    start = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4", "--prompt-init", "vocab"]
    first = run(train_args(data, reference, tmp_path, *start, "--max-update", "1"))
    assert first.count("prompts initialized with --prompt-init=vocab") == 1
    resumed = run(train_args(data, reference, tmp_path, *start, "--max-update", "2"))
    assert "@ 1 updates" in resumed and "prompts initialized" not in resumed  # the trained prompts are kept


def test_prompt_init_from_a_prompt_file(data, reference, tmp_path):
    """--prompt-init FILE through fairseq-train: another run's exported prompts are the starting point."""
    from ofa_prompt.prompt_file import export_prompts

    start = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4", "--max-update", "1"]
    run(train_args(data, reference, tmp_path / "first", *start))
    export_prompts(str(tmp_path / "first" / "checkpoint_last.pt"), str(tmp_path / "first.safetensors"))
    log = run(train_args(data, reference, tmp_path / "second", *start,
                         "--prompt-init", str(tmp_path / "first.safetensors"), "--lr", "0"))
    assert f"prompts initialized with --prompt-init={tmp_path / 'first.safetensors'}" in log
    first = prompts(tmp_path / "first" / "checkpoint_last.pt")
    second = prompts(tmp_path / "second" / "checkpoint_last.pt")
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)  # lr 0: still the file's prompts
    bad = subprocess.run(train_args(data, reference, tmp_path / "third", *start, "--prompt-init", "vocabb"),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--prompt-init=vocabb: neither one of random, vocab, activations" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_two_gloo_processes_equal_one_with_double_update_freq(data, reference, tmp_path):
    common = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "2", "--max-update", "2",
              "--dropout", "0", "--prompt-dropout", "0"]
    port = str(29500 + os.getpid() % 1000)
    procs = [subprocess.Popen(train_args(data, reference, tmp_path / "dist", *common, "--distributed-backend", "gloo",
                                         "--distributed-world-size", "2", "--distributed-rank", str(rank),
                                         "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                                         "--distributed-no-spawn", "--ddp-backend", "legacy_ddp",
                                         "--load-checkpoint-on-all-dp-ranks"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-2000:] + logs[1][-2000:]
    run(train_args(data, reference, tmp_path / "single", *common, "--update-freq", "2"))
    a, b = prompts(tmp_path / "dist" / "checkpoint_last.pt"), prompts(tmp_path / "single" / "checkpoint_last.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert "bsz=4" in logs[0]  # each update saw both ranks' 2 rows


def test_bf16_autocast_training_through_fairseq_train(data, reference, tmp_path):
    log = run(train_args(data, reference, tmp_path, "--finetune-from-model", str(reference / "plain.pt"),
                         "--batch-size", "4", "--max-update", "2", "--autocast", "bf16"))
    losses = [float(x) for x in re.findall(r"train_inner .* loss=([\d.]+)", log)]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses)
    assert all(v.dtype == torch.float32 for v in prompts(tmp_path / "checkpoint_last.pt").values())


def test_corrupted_last_checkpoint_names_the_previous_good_one(data, reference, tmp_path):
    backbone = str(reference / "plain.pt")
    start = ["--batch-size", "4", "--max-update", "3", "--save-interval-updates", "1", "--keep-interval-updates", "2"]
    run(train_args(data, reference, tmp_path, "--finetune-from-model", backbone, *start))
    last, good = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_1_2.pt"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2])  # a run killed while writing it
    p = subprocess.run(train_args(data, reference, tmp_path, "--finetune-from-model", backbone, *start),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    advice = f"--restore-file {good} --backbone {backbone} in place of --finetune-from-model {backbone}"
    assert f"{last} cannot be read" in p.stderr and advice in p.stderr, p.stderr[-3000:]
    # the advice works: training resumes from the interval checkpoint of update 2
    log = run(train_args(data, reference, tmp_path, "--restore-file", str(good), "--backbone", backbone, *start))
    assert "@ 2 updates" in log and "num_updates=3" in log


@pytest.mark.parametrize("precision", [["--bf16"], ["--fp16", "--fp16-no-flatten-grads"]])
def test_fairseq_half_precision_on_cpu(data, reference, tmp_path, precision):
    """fairseq's own mixed precision on CPU: the model in bfloat16 / float16, float32 master copies and Adam
    state in FP16Optimizer. fairseq saves the weights upcast to float32 (utils.move_to_cpu), not the
    master copies: the saved prompts are the half-precision values."""
    log = run(train_args(data, reference, tmp_path, "--finetune-from-model", str(reference / "plain.pt"),
                         "--batch-size", "4", "--max-update", "2", "--cpu", *precision))
    losses = [float(x) for x in re.findall(r"train_inner .* loss=([\d.]+)", log)]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses)
    saved = read_checkpoint(str(tmp_path / "checkpoint_last.pt"))
    assert saved["optimizer_history"][-1]["optimizer_name"] == "FP16Optimizer"
    half = torch.bfloat16 if precision[0] == "--bf16" else torch.float16
    for v in prompts(tmp_path / "checkpoint_last.pt").values():
        assert v.dtype == torch.float32 and torch.equal(v, v.to(half).float())
    moments = [t for s in saved["last_optimizer_state"]["state"].values() for t in (s["exp_avg"], s["exp_avg_sq"])]
    assert len(moments) == 4 and all(t.dtype == torch.float32 for t in moments)


def test_a_second_run_on_the_same_save_dir_refuses_to_start(data, reference, tmp_path):
    start = ["--finetune-from-model", str(reference / "plain.pt"), "--batch-size", "4"]
    first = subprocess.Popen(cold(train_args(data, reference, tmp_path / "run", *start, "--max-update", "1000")),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # the first run is training
            if "train_inner" in line or "num_updates" in line:
                break
        second = subprocess.run(train_args(data, reference, tmp_path / "run", *start, "--max-update", "1"),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert f"--save-dir {tmp_path / 'run'} is in use by another fairseq-train (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the kernel drops the lock of a killed run: the same command then resumes there
    assert "done training" in run(train_args(data, reference, tmp_path / "run", *start, "--max-update", "1"))
