"""Data-parallel prompt tuning of the demo configuration on CPU: N gloo processes against 1 process with
N times the update frequency, side by side; prints the largest difference of the final prompts, the
wall times, and a control (1 process with 1/N of the rows per update) that must differ.

    python benchmarks/distributed.py [--updates 20] [--world-size 2]

Needs the demo's cached data and backbone (made by `bash scripts/demo.sh`, which runs once if missing).
Dropout is off so that both runs compute the same gradients from the same rows.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
from common import BASE_CONFIG, ensure_backbone  # noqa: E402
from ofa_prompt.checkpoint import BACKBONE_KEY, read_checkpoint  # noqa: E402
from ofa_prompt.yaml_config import build_command  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(save_dir: str, updates: int, extra, world_size: int = 1):
    """Runs fairseq-train (one process per rank); returns wall seconds."""
    cmd = build_command(BASE_CONFIG, [f"train.save-dir={save_dir}", f"train.max-update={updates}",
                                      f"train.total-num-update={updates}", "train.warmup-updates=5",
                                      "train.dropout=0", "train.prompt-dropout=0", "train.log-interval=5"])
    start = time.time()
    if world_size == 1:
        subprocess.run(cmd + extra, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        return time.time() - start
    port = free_port()
    ranks = [subprocess.Popen(cmd + extra + ["--distributed-backend", "gloo",
                                             "--distributed-world-size", str(world_size),
                                             "--distributed-rank", str(r), "--distributed-init-method",
                                             f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
                                             "--ddp-backend", "legacy_ddp", "--load-checkpoint-on-all-dp-ranks"],
                              cwd=REPO, stdout=subprocess.DEVNULL) for r in range(world_size)]
    if any(p.wait() for p in ranks):
        raise SystemExit("a rank failed")
    return time.time() - start


def prompts(save_dir: str):
    state = read_checkpoint(os.path.join(save_dir, "checkpoint_last.pt"))["model"]
    return {k: v for k, v in state.items() if k != BACKBONE_KEY}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--world-size", type=int, default=2)
    a = ap.parse_args(argv)
    ensure_backbone(quick=False)
    with tempfile.TemporaryDirectory() as tmp:
        n = a.world_size
        batch = 32 // n  # the same 32 rows per update in both runs
        dist = train(os.path.join(tmp, "dist"), a.updates, ["--batch-size", str(batch)], world_size=n)
        single = train(os.path.join(tmp, "single"), a.updates, ["--batch-size", str(batch), "--update-freq", str(n)])
        # control: half the rows per update must give other prompts, or the comparison proves nothing
        train(os.path.join(tmp, "half"), a.updates, ["--batch-size", str(batch)])
        p, q, h = (prompts(os.path.join(tmp, run)) for run in ("dist", "single", "half"))
        diff = max((p[k].float() - q[k].float()).abs().max().item() for k in p)
        control = max((h[k].float() - q[k].float()).abs().max().item() for k in h)
        scale = max(q[k].float().abs().max().item() for k in q)
    print(f"demo configuration, {a.updates} updates of 32 rows, "
          f"prompts {', '.join(f'{k} {tuple(v.shape)}' for k, v in p.items())}")
    print(f"{n} gloo processes (batch {batch} each): {dist:.1f} s")
    print(f"1 process, --update-freq {n} (batch {batch}): {single:.1f} s")
    print(f"largest difference of the final prompts: {diff:.3g} (largest prompt value {scale:.3g})")
    print(f"control, 1 process without --update-freq (batch {batch}): differs by {control:.3g}")
    return diff


if __name__ == "__main__":
    main()
