"""The README as a user meets it: every fenced snippet is run here, as written, and the demo's figures it quotes
are the ones the demo wrote (docs/demo.json).

Each fence in README.md follows a marker `<!-- snippet: NAME ... -->`; RUNS names the test that runs each snippet,
so a snippet added without a test, or a test whose snippet is gone, fails `test_every_snippet_has_a_test` instead
of being skipped. The snippets run at micro size through what they document themselves: the quick start's
`CONFIG` (tests/data/readme_micro.yaml, over the micro OFA written by OFA's own code in ../shared/ofa_reference),
the OFA scripts' environment variables, and the demo's DEMO_QUICK=1."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import tiny_data
from conftest import REPO
from test_ofa_scripts import ofa_dir  # noqa: F401  (OFA's folder layout with OFA-format data: a fixture)

README = REPO / "README.md"
MARKER = re.compile(r"<!-- snippet: ([\w-]+)[^>]*-->\n```(\w*)\n(.*?)```", re.S)
RUNS = {  # snippet -> the test below that runs it
    "install": "test_install_snippet",
    "two-commands": "test_two_commands_snippet",
    "quick-start": "test_quick_start_snippets",
    "quick-start-python": "test_quick_start_snippets",
    "gpu-route": "test_gpu_route_snippet",
}


def snippets() -> dict:
    """NAME -> (language, code) of every marked fence of the README."""
    found = {}
    for name, language, code in MARKER.findall(README.read_text()):
        assert name not in found, f"two README snippets are called {name}"
        found[name] = (language, code)
    return found


def run_bash(name, cwd, env=None, timeout=900):
    language, code = snippets()[name]
    assert language == "bash", name
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env={**os.environ, **(env or {})},
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"README snippet {name}:\n" + p.stdout[-4000:] + p.stderr[-4000:]
    return p.stdout + p.stderr


def test_every_snippet_has_a_test():
    text = README.read_text()
    fences = len(re.findall(r"^```", text, re.M))  # each snippet opens and closes one
    assert fences == 2 * len(snippets()), "a README fence without a `<!-- snippet: NAME -->` marker just above it"
    assert set(snippets()) == set(RUNS), "README snippets and the tests that run them differ"
    assert all(callable(globals().get(test)) for test in RUNS.values())
    assert {language for language, _ in snippets().values()} <= {"bash", "python"}


def demo_figures_in_readme(text: str) -> dict:
    start = text.index("<!-- demo figures: docs/demo.json")
    table = text[start:text.index("\n\n", start)]
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", table, re.M))  # the header row has no second cell


def measured_on(record: dict) -> str:
    """How the README states the machine the demo's figures come from."""
    load = record["load_average_1min"]
    if load is None:  # figures reported with the command, the load not sampled
        return f"on {record['cpus']} CPU cores, {record['load_note']}"
    return (f"on {record['cpus']} CPU cores, 1-minute load average {load['min']:.1f}-{load['max']:.1f} during the run "
            f"({record['date']})")


def test_the_readme_quotes_the_demo_figures_the_demo_wrote():
    """docs/demo.json holds the figures of `bash scripts/demo.sh` from a cold cache (the demo writes this format to
    $DEMO_FIGURES); the README's table and the machine it states must be that file's."""
    record = json.loads((REPO / "docs" / "demo.json").read_text())
    text = README.read_text()
    assert record["command"] == "bash scripts/demo.sh" and not record["backbone_cached"]
    assert demo_figures_in_readme(text) == record["table"]
    assert measured_on(record) in " ".join(text.split()), measured_on(record)


def test_a_changed_demo_figure_is_noticed():
    text = README.read_text().replace("| CIDEr, prompt-tuned | ", "| CIDEr, prompt-tuned | 1")
    record = json.loads((REPO / "docs" / "demo.json").read_text())
    assert demo_figures_in_readme(text) != record["table"]


@pytest.mark.slow
def test_install_snippet():
    """On an installed checkout the install command finds everything there and installs nothing."""
    out = run_bash("install", REPO, timeout=300)
    assert "installing" not in out


@pytest.mark.slow
def test_two_commands_snippet(tmp_path):
    """Both commands as written: the demo shortened (DEMO_QUICK=1, as the README says the tests run it), the
    test command collecting the suite (pytest's own PYTEST_ADDOPTS) rather than running it inside itself."""
    out = run_bash("two-commands", REPO, {"DEMO_QUICK": "1", "DEMO_DIR": str(tmp_path / "demo"),
                                          "PYTEST_ADDOPTS": "--collect-only"})
    record = json.loads((tmp_path / "demo" / "figures.json").read_text())  # what docs/demo.json is made of
    assert record["command"] == "DEMO_QUICK=1 bash scripts/demo.sh" and not record["backbone_cached"]
    assert record["cpus"] == os.cpu_count() and record["load_average_1min"]["samples"] >= 2
    for row, value in record["table"].items():  # the table it printed
        assert re.search(rf"^{re.escape(row)}\s+{re.escape(value)}$", out, re.M), row
    assert measured_on(record).startswith(f"on {os.cpu_count()} CPU cores, 1-minute load average")
    collected = [int(n) for n in re.findall(r"^(\d+)(?:/\d+)? tests? (?:collected|selected)", out, re.M)]
    assert len(collected) == 2 and all(n > 0 for n in collected), out[-2000:]  # the unit tests, then the slow ones


def quick_start_folder(root: Path, reference: Path) -> Path:
    """What the quick start assumes, at micro size: this checkout's scripts and configs, OFA's release in OFA/ (the
    reference micro OFA-Base and its word dictionary), my_images/ and captions in JSON lines."""
    for name in ("scripts", "configs", "ofa_prompt"):  # a checkout's root, as the quick start runs from
        (root / name).symlink_to(REPO / name)
    (root / "OFA" / "checkpoints").mkdir(parents=True)
    (root / "OFA" / "checkpoints" / "ofa_base.pt").symlink_to(reference / "plain.pt")
    (root / "OFA" / "utils").mkdir()
    (root / "OFA" / "utils" / "BPE").symlink_to(reference)
    images = root / "my_images"
    images.mkdir()
    names = ["cat.jpg", "dog.jpg", *(f"{i}.png" for i in range(6))]
    for i, name in enumerate(names):  # small photos of a coloured square, JPEG and PNG
        image = Image.new("RGB", (48 + 4 * i, 40), "white")
        ImageDraw.Draw(image).rectangle([2 * i, 6, 2 * i + 20, 30], fill=tiny_data.COLORS[i % 3])
        image.save(images / name)
    words = tiny_data.REFERENCE_WORDS
    records = [{"image": name, "caption": " ".join(words[(i + k) % len(words)] for k in range(3))}
               for i, name in enumerate(names)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    return root


@pytest.mark.slow
def test_quick_start_snippets(reference, tmp_path):
    """The own-data route as written: make_tsv -> scripts/train.sh -> scripts/evaluate.sh -> prompt_file export ->
    predict, then the Python snippet in the same folder, which must caption the images as predict did."""
    folder = quick_start_folder(tmp_path, reference)
    config = REPO / "tests" / "data" / "readme_micro.yaml"
    out = run_bash("quick-start", folder, {"CONFIG": str(config)})
    assert "--finetune-from-model OFA/checkpoints/ofa_base.pt" in out and "--tuning-method prompt" in out
    assert re.search(r"^metric: CIDEr: [\d.]+", out, re.M), out[-3000:]
    assert (folder / "runs" / "my_caption.safetensors").is_file()
    printed = dict(re.findall(r"^(my_images/\w+\.jpg)\t(.*)$", out, re.M))
    assert list(printed) == ["my_images/cat.jpg", "my_images/dog.jpg"], out[-2000:]

    language, code = snippets()["quick-start-python"]
    assert language == "python"
    p = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert eval(p.stdout.strip().splitlines()[-1]) == list(printed.values())


@pytest.mark.slow
def test_gpu_route_snippet(ofa_dir, tmp_path):  # noqa: F811
    """OFA's run scripts as the README runs them, from OFA's folder, on a CPU: ofa_tiny (OFA's smallest release,
    random weights here, made by the same script finetuning 1 update), 32-pixel images, one epoch of 2 updates."""
    device = {"OFA_PROMPT": str(REPO), "ARCH": "ofa_tiny", "DEVICE_ARGS": "--cpu", "PATCH_IMAGE_SIZE": "32",
              "BATCH_SIZE": "2", "UPDATE_FREQ": "2", "MAX_EPOCH": "1"}
    backbone = subprocess.run(
        ["bash", str(REPO / "scripts" / "ofa" / "train_refcoco.sh")], cwd=ofa_dir, capture_output=True, text=True,
        env={**os.environ, **device, "METHOD": "finetune", "RESTORE_FILE": "none", "SAVE_DIR": str(tmp_path),
             "EXTRA_ARGS": "--max-update=1 --no-save-optimizer-state --disable-validation"})
    assert backbone.returncode == 0, backbone.stderr[-3000:]
    shutil.copy(tmp_path / "checkpoint_last.pt", ofa_dir / "checkpoints" / "ofa_tiny.pt")
    out = run_bash("gpu-route", ofa_dir, device)
    assert "--encoder-prompt-length=64" in out  # the paper's length, through OFA's own flags
    assert (ofa_dir / "refcoco_checkpoints" / "prompt" / "checkpoint_best.pt").is_file()
    assert "Acc@0.5" in (ofa_dir / "results" / "refcoco" / "generate-refcoco_testA.txt").read_text()
    assert len(json.loads((ofa_dir / "results" / "refcoco" / "refcoco_testA_predict.json").read_text())) == 4
