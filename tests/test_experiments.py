"""The experiment scripts in --quick mode (a few updates on the quick demo data): each trains through
stock fairseq-train, scores with fairseq-generate and writes its table, JSON and plot."""
import json
import os
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # fairseq-train / fairseq-generate runs end to end

sys.path.insert(0, str(REPO / "experiments"))


def table(out):
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().count("\n|") == len(data["rows"]) + 2  # header, separator, rows
    return data["rows"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    import compare_methods

    out = tmp_path_factory.mktemp("compare")
    compare_methods.main(["--quick", "--tasks", "snli_ve", "--out", str(out)])
    return out


def test_compare_methods(compared):
    rows = table(compared)
    assert [r[1] for r in rows] == ["finetune", "prompt", "adapter", "bitfit"]
    share = {r[1]: float(r[4].split("(")[1].rstrip("%)")) for r in rows}
    assert share["finetune"] == 100.0 and 0 < share["bitfit"] < share["prompt"] < 1.0
    assert all(0.0 <= float(r[2]) <= 1.0 and 0.0 <= float(r[5]) <= 1.0 for r in rows)
    # validated every update: the best validation score is reached at one of the 3 updates, within the run's time
    assert all(1 <= r[6] <= 3 and float(r[7]) > 0 and 0 <= float(r[8]) <= float(r[9]) for r in rows)
    assert (compared / "methods.png").stat().st_size > 1000


def test_a_run_starts_afresh(compared, tmp_path):
    import common

    common.ensure_backbone(quick=True)  # made by the compared fixture: only sets the environment
    stale = tmp_path / "runs" / "again" / "checkpoint_last.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's checkpoint, made with another backbone")
    ckpt, _, text = common.train("again", str(tmp_path), "snli_ve", common.METHODS["prompt"], 1)
    assert "num_updates 1" in text and os.path.getsize(ckpt) > 1000


def test_robustness_matches_generate_at_eps_zero(compared, tmp_path):
    import robustness

    robustness.main(["--quick", "--from", str(compared), "--out", str(tmp_path), "--eps", "0", "0.1"])
    rows = {r[0]: r for r in table(tmp_path)}
    clean = {r[1]: r[2] for r in table(compared)}
    # eps 0 is the clean test split, scored in-process: the same accuracy fairseq-generate reported
    assert all(rows[m][1] == clean[m] for m in rows) and set(rows) == set(clean)
    assert list(tmp_path.glob("*.png"))


def test_ablations_and_convergence(tmp_path):
    import ablations
    import convergence

    ablations.main(["--quick", "--groups", "reparam", "--out", str(tmp_path / "abl")])
    rows = table(tmp_path / "abl" / "reparam")
    counts = [int(r[2].split()[0].replace(",", "")) for r in rows]
    assert [r[0] for r in rows] == ["no reparameterization", "MLP reparameterization"] and counts[1] > counts[0]
    convergence.main(["--quick", "--out", str(tmp_path / "conv")])
    rows = table(tmp_path / "conv")
    assert [r[0] for r in rows][:2] == ["finetune", "prompt, random init"] and len(rows) == 5
    assert (tmp_path / "conv" / "convergence.png").is_file()
