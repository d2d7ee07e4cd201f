"""The experiment scripts in --quick mode (a few updates on the quick demo data): each trains through
stock fairseq-train, scores with fairseq-generate and writes its table, JSON and plot; runs of the same
settings are shared between studies through the run store. The statistics behind the tables are tested
directly (not slow)."""
import json
import math
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))


def table(out):
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().count("\n|") >= len(data["rows"]) + 2  # header, separator, rows
    return data


def runs_of(rows, column=1):
    """A table's rows without its trivial-baseline rows (which every table has)."""
    assert any(str(r[column]).startswith("trivial baseline") for r in rows)
    return [r for r in rows if not str(r[column]).startswith("trivial baseline")]


def test_mean_and_sample_standard_deviation():
    import common

    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert common.mean_std([0.5]) == (0.5, 0.0)
    assert common.pm([0.25, 0.75], 2) == "0.50 ± 0.35" and common.pm([0.25]) == "0.2500" and common.pm([]) == "-"
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            common.mean_std(bad)


def test_first_point_reaching_a_target_and_the_earliest_best():
    import common

    curve = [(25, 0.5, 3.0), (50, 0.8, 6.0), (75, 0.9, 9.0), (100, 0.9, 12.0)]
    assert common.first_reaching(curve, 0.8) == (50, 0.8, 6.0) and common.first_reaching(curve, 0.95) is None
    assert common.best_point(curve) == (75, 0.9, 9.0)


def test_relative_drop_refuses_a_clean_score_it_cannot_divide_by():
    import common

    assert common.relative_drop(0.8, 0.6) == pytest.approx(0.25)
    assert common.relative_drop(0.5, 0.6) == pytest.approx(-0.2)  # the attack helped
    with pytest.raises(ValueError):
        common.relative_drop(0.0, 0.1)


def test_sizes_grow_and_name_every_architecture_option():
    import common

    sizes = list(common.SIZES.values())
    assert [s.width for s in sizes] == sorted(s.width for s in sizes) and sizes[0].name == "micro"
    keys = {o.split("=")[0] for o in sizes[0].overrides()}
    assert keys == {f"train.{side}-{k}" for side in ("encoder", "decoder")
                    for k in ("layers", "embed-dim", "ffn-embed-dim", "attention-heads")}


def test_a_matched_backbone_is_the_first_checkpoint_pretrained_as_well():
    import common

    run = common.Pretraining("small", ((50, 2.0, "a"), (100, 1.2, "b"), (150, 1.1, "c"), (200, 1.15, "d")))
    assert run.matched(1.2)[2] == "b" and run.matched(1.12)[2] == "c"
    assert run.matched(0.5)[2] == "d"  # never reached: the last (the scale table prints each backbone's loss)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("study-runs")
    old = os.environ.get("STUDY_RUNS")
    os.environ["STUDY_RUNS"] = str(path)
    yield path
    if old is None:
        del os.environ["STUDY_RUNS"]
    else:
        os.environ["STUDY_RUNS"] = old


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """One docs folder for the studies, as in the repository (claims.py reads them all)."""
    return tmp_path_factory.mktemp("docs")


@pytest.fixture(scope="module")
def compared(store, docs):
    import compare_methods

    out = docs / "compare_methods"
    # adapters are left out to save CI time: the table, seeds and sharing do not depend on the method
    compare_methods.main(["--quick", "--tasks", "snli_ve", "--methods", "finetune", "prompt", "bitfit",
                          "--seeds", "1", "2", "--out", str(out)])
    return out


@pytest.mark.slow
def test_compare_methods_over_seeds(compared, store):
    data = table(compared)
    rows = runs_of(data["rows"])
    assert [r[1] for r in rows] == ["finetune", "prompt", "bitfit"]
    assert all(" ± " in r[3] for r in rows)  # two seeds: mean ± sd
    assert rows[1][5].split(" (")[0] in ("above finetuning", "below finetuning", "no significant difference")
    assert data["baselines"]["snli_ve"] == pytest.approx(float(data["rows"][0][3]), abs=1e-4)
    trained = {r[1]: float(r[7].split("(")[1].rstrip("%)")) for r in rows}
    assert trained["finetune"] == 100.0 and 0 < trained["bitfit"] < trained["prompt"] < 2.0
    for method in ("finetune", "prompt", "bitfit"):
        seeds = data["per_seed"][f"snli_ve/{method}"]
        assert len(seeds["score"]) == 2 and all(0.0 <= s <= 1.0 for s in seeds["score"])
        assert all(1 <= u <= 3 for u in seeds["updates_to_best"])  # validated every update
    logs = sorted(store.glob("micro/snli_ve_prompt_u3_s*.train.log"))
    assert [("'seed': %d" % s) in p.read_text() for p, s in zip(logs, (1, 2))] == [True, True]
    assert (compared / "methods.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_stored_run_is_reused_and_a_changed_one_runs_afresh(compared, store):
    import common
    import fairseq_log

    run = common.Run("snli_ve", "prompt", tuple(common.METHODS["prompt"]), 3, 1, 1)
    log = store / (run.name + ".train.log")
    before = log.stat().st_mtime
    assert common.execute(run, quick=True)["score"] == json.loads((store / (run.name + ".json")).read_text())["score"]
    assert log.stat().st_mtime == before  # read back, not trained again
    changed = common.Run("snli_ve", "prompt_short", tuple(common.METHODS["prompt"] + common.prompt_length(4)), 1, 1, 1)
    stale = store / changed.name / "checkpoint_last.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's checkpoint, made with another backbone")
    result = common.execute(changed, quick=True)
    text = (store / (changed.name + ".train.log")).read_text()
    epochs = [stat for _, stat in fairseq_log.stats(fairseq_log.records(text), "train")]
    assert epochs and epochs[-1]["train_num_updates"] == "1"  # trained from the start, not resumed
    assert result["trained"] < json.loads((store / (run.name + ".json")).read_text())["trained"]


@pytest.fixture(scope="module")
def attacked(compared, docs):
    import robustness

    robustness.main(["--quick", "--tasks", "snli_ve", "--methods", "finetune", "prompt", "bitfit", "--seeds", "1", "2",
                     "--out", str(docs / "robustness")])
    return docs / "robustness"


@pytest.mark.slow
def test_robustness_on_both_attacks_matches_generate_at_eps_zero(compared, attacked):
    data = table(attacked)
    rows = runs_of(data["rows"], 2)
    methods = ("finetune", "prompt", "finetune at prompt's score", "bitfit", "finetune at bitfit's score")
    assert [(r[0], r[2]) for r in rows] == [(a, m) for a in ("image", "text") for m in methods]
    clean = {r[1]: r[3] for r in runs_of(table(compared)["rows"])}
    # eps 0 is the clean test split, scored in-process: the same accuracy fairseq-generate reported (finetuning
    # kept every checkpoint: the same training as the comparison's run)
    assert all(r[3] == clean[r[2]] for r in rows if r[2] in clean)
    assert (attacked / "robustness.png").is_file()


def test_robustness_validates_finetuning_at_its_own_interval_and_keeps_each_checkpoint(monkeypatch):
    import common
    import robustness

    runs = robustness.attacked_runs(["caption"], ["finetune", "prompt"], [1], 200, 25, "micro", 5)
    finetune, prompt = runs["caption", "finetune", 1], runs["caption", "prompt", 1]
    assert (finetune.every, finetune.keep_every_checkpoint) == (5, True)
    assert prompt == common.method_run("caption", "prompt", 200, 25, 1)  # the method comparison's own run
    monkeypatch.setenv("DEMO_DATA", "/data")
    train = " ".join(common.run_commands(finetune, False, "backbone.pt")[1])
    assert "--validate-interval-updates 5 " in train and "--save-interval-updates 5 " in train
    assert "--keep-interval-updates -1 " in train


@pytest.mark.slow
def test_validating_finetuning_more_often_leaves_its_training_as_it_was(compared, store, tmp_path, monkeypatch):
    import common
    import fairseq_log
    import robustness

    # finetuning as the method comparison ran it (validated every update), but validated every 2
    (often,) = robustness.attacked_runs(["snli_ve"], ["finetune"], [1], 3, 1, "micro", 2).values()
    monkeypatch.setenv("STUDY_RUNS", str(tmp_path))  # not over the robustness fixture's run of the same name
    common.execute(often, quick=True)
    log = (tmp_path / f"{often.name}.train.log").read_text()
    assert "'validate_interval_updates': 2" in log

    def training(text):  # each epoch's mean training loss and gradient norm (fairseq's --log-format json)
        return [float(stat[key]) for _, stat in fairseq_log.stats(fairseq_log.records(text), "train")
                for key in ("train_loss", "train_gnorm")]

    every_update = training((store / "micro" / "snli_ve_finetune_u3_s1.train.log").read_text())
    # the same dropout masks and batches; on CPU, one command run twice differs in the gradient norm's last digit
    assert len(every_update) == 4 and training(log) == pytest.approx(every_update, rel=1e-3)


@pytest.mark.slow
def test_robustness_attacks_finetuning_at_each_methods_clean_score(attacked, store):
    import common

    matched = table(attacked)["matched_updates"]
    for method in ("prompt", "bitfit"):
        for seed, updates in zip((1, 2), matched[f"snli_ve/{method}"]):
            own = json.loads((store / f"micro/snli_ve_{method}_u3_s{seed}.json").read_text())
            finetuned = json.loads((store / f"micro/snli_ve_finetune_every-checkpoint_u3_s{seed}.json").read_text())
            # finetuning's checkpoint whose validation score is closest to the method's best, and it was kept
            assert updates == common.closest_point(finetuned["curve"], common.best_point(own["curve"])[1])[0]
            assert list((store / "micro" / f"snli_ve_finetune_every-checkpoint_u3_s{seed}").glob(
                f"checkpoint_*_{updates}.fgsm-*.json"))  # attacked there


@pytest.fixture(scope="module")
def ablated(compared, docs):
    import ablations

    ablations.main(["--quick", "--task", "snli_ve", "--groups", "reparam", "--out", str(docs / "ablations")])
    return docs / "ablations"


@pytest.mark.slow
def test_ablation_shares_the_recommended_run_and_counts_the_mlp(ablated, store):
    data = table(ablated / "reparam")
    rows = runs_of(data["rows"], 0)
    counts = [int(r[4].split()[0].replace(",", "")) for r in rows]
    assert [r[0] for r in rows] == ["no reparameterization", "MLP reparameterization"] and counts[1] > counts[0]
    shared = json.loads((store / "micro" / "snli_ve_prompt_u3_s1.json").read_text())["score"]
    assert data["per_seed"]["no reparameterization"] == [shared]


@pytest.fixture(scope="module")
def converged(compared, docs):
    import convergence

    convergence.main(["--quick", "--tasks", "snli_ve", "--inits", "random", "vocab", "pretrained", "transfer",
                      "--out", str(docs / "convergence")])
    return docs / "convergence"


@pytest.mark.slow
def test_convergence_starts_prompts_from_pretrained_and_transferred_files(converged, store):
    rows = runs_of(table(converged)["rows"])
    assert [r[1] for r in rows] == ["finetune", "prompt, random", "prompt, vocab", "prompt, pretrained",
                                    "prompt, transfer"]
    for kind, source in (("pretrained", "prompt_pretraining_u3.safetensors"), ("transfer", ".vqa.safetensors")):
        (log,) = store.glob(f"micro/snli_ve_prompt_init-{kind}-*_u3_s1.train.log")
        assert "prompts initialized with --prompt-init=" in log.read_text() and source in log.read_text()
    # the prompt pretraining tuned the prompts only, on all four tasks of the mix
    text = (store / "micro" / "prompt_pretraining_u3.train.log").read_text()
    assert "num. trained: 32,768" in text
    assert all(f"pretrain_{t}_train.tsv" in text for t in ("caption", "vqa", "refcoco", "snli_ve"))
    assert (converged / "convergence.png").is_file()


@pytest.fixture(scope="module")
def scaled(compared, docs):
    import scale

    scale.main(["--quick", "--sizes", "micro", "small", "--tasks", "snli_ve", "--methods", "finetune", "prompt",
                "--out", str(docs / "scale")])
    return docs / "scale"


@pytest.mark.slow
def test_scale_plots_the_share_against_parameters(scaled):
    data = table(scaled)
    assert data["params"]["small"] > data["params"]["micro"]
    assert [(r[0], r[3]) for r in runs_of(data["rows"], 3)] == [(s, m) for s in ("micro", "small")
                                                                 for m in ("finetune", "prompt")]
    assert (scaled / "scale.png").is_file() and (scaled / "scores.png").is_file()
    assert not any(math.isnan(v) for vs in data["pooled"]["prompt"].values() for v in vs)
    # matched pretraining: micro tuned from its first checkpoint as well pretrained as the small one's last
    (small_updates, target), (micro_updates, micro_loss) = data["backbones"]["small"], data["backbones"]["micro"]
    assert data["pretraining"] == "matched" and small_updates == 4  # the largest: its last checkpoint
    assert micro_loss <= target or micro_updates == 4  # as well pretrained, or never (4 quick updates)


def test_a_learning_rate_run_is_the_methods_own_run_at_its_own_rate():
    import common

    own = common.lr_run("caption", "finetune", 5e-4, 200, 25, 2, "medium", 0.9)
    assert common.method_lr("finetune") == 5e-4
    assert own == common.method_run("caption", "finetune", 200, 25, 2, "medium", 0.9)  # shared with scale.py
    other = common.lr_run("caption", "finetune", 1e-4, 200, 25, 2, "medium", 0.9)
    assert other.label == "finetune_lr0.0001" and other.name != own.name
    assert [o for o in other.options if o.startswith("train.lr=")] == ["train.lr=0.0001"]
    assert set(other.options) - {"train.lr=0.0001"} == set(own.options) - {"train.lr=5e-4"}


@pytest.fixture(scope="module")
def learning_rates(scaled, docs):
    import learning_rate

    learning_rate.main(["--quick", "--sizes", "micro", "small", "--task", "snli_ve", "--method", "finetune",
                        "--lrs", "5e-4", "2e-3", "--out", str(docs / "learning_rate")])
    return docs / "learning_rate"


@pytest.mark.slow
def test_learning_rate_by_size_shares_the_scale_studys_runs(learning_rates, scaled, store):
    data = table(learning_rates)
    assert [(r[0], r[1]) for r in runs_of(data["rows"])] == [
        ("micro", "0.0005 (default)"), ("micro", "0.002"), ("small", "0.0005 (default)"), ("small", "0.002")]
    runs = table(scaled)["per_run"]
    for size in ("micro", "small"):
        (name,) = [n for n in runs if n.startswith(f"{size}_matched") and n.endswith("/snli_ve_finetune_u3_s1")]
        assert data["per_seed"][f"{size}/0.0005"] == [runs[name]]  # the scale study's run, read back
        (log,) = store.glob(f"{size}_matched*/snli_ve_finetune_lr0.002_u3_s1.train.log")
        assert "'lr': [0.002]" in log.read_text()
    assert (learning_rates / "learning_rate.png").stat().st_size > 1000


@pytest.mark.slow
def test_claims_table_from_every_study(docs, compared, attacked, ablated, converged, scaled, learning_rates):
    import claims

    readme = docs / "README.md"
    readme.write_text(f"# Results\n\n{claims.BEGIN}\nold table\n{claims.END}\n\nthe text after the table\n")
    claims.main(["--docs", str(docs)])
    text = readme.read_text()
    assert "old table" not in text and text.endswith("the text after the table\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    found = {r.split(" | ")[0][2:] for r in rows}
    assert {"Prompt tuning beats BitFit", "Prompt tuning trains unstably",
            "The gap to finetuning closes as the model grows (backbones pretrained to the same loss, snli_ve)",
            "Prompt tuning is more robust to FGSM (image)",
            "Prompt tuning is more robust to FGSM (text)", "Reparameterization (MLP) is task-dependent",
            "Prompt tuning converges slowly (snli_ve)"} <= found
    (matched,) = [r for r in rows if r.startswith("| The gap to finetuning closes as the model grows (backbones")]
    assert "finetune on snli_ve at each size's best learning rate: micro " in matched and "(learning_rate)" in matched
    (image,) = [r for r in rows if r.startswith("| Prompt tuning is more robust to FGSM (image)")]
    assert "clean scores within 15% on " in image  # how many tasks the matched finetuning really matched
    (slow,) = [r for r in rows if r.startswith("| Prompt tuning converges slowly (snli_ve)")]
    assert "finetuning's" in slow.split(" | ")[2]  # the updates to the target, or both best scores when none reach it
    # the quick studies left out the length and depth ablations: listed as not measured, not invented
    assert any("length ablation, depth ablation" in r for r in rows)


def json_log(*records):
    """fairseq-train's output with --log-format json: its progress bar's records (logger, statistics)."""
    return "\n".join(f"2026-12-04 12:09:{i:02d} | INFO | {logger} | {json.dumps(stats)}"
                     for i, (logger, stats) in enumerate(records))


def test_the_checkpoint_kept_at_an_update_is_read_from_the_train_log(tmp_path):
    import common
    import fairseq_log

    # as fairseq 0.12 saves: a validation at an epoch's end goes to the epoch checkpoint, one mid-epoch to the
    # interval checkpoint; best and last are overwritten
    log = json_log(("valid", {"epoch": 1, "valid_score": "0.38", "valid_num_updates": "25"}),
                   ("train", {"epoch": 1, "train_num_updates": "25"}),
                   ("valid", {"epoch": 2, "valid_score": "0.4", "valid_num_updates": "50"}),
                   ("valid", {"epoch": 3, "valid_score": "0.43", "valid_num_updates": "75"}))
    for name in ("checkpoint1.pt", "checkpoint_2_50.pt", "checkpoint_best.pt"):
        (tmp_path / name).write_bytes(b"")
    save = str(tmp_path)
    assert fairseq_log.kept_checkpoint(log, save, 25) == str(tmp_path / "checkpoint1.pt")
    assert fairseq_log.kept_checkpoint(log, save, 50) == str(tmp_path / "checkpoint_2_50.pt")
    assert fairseq_log.kept_checkpoint(log, save, 75) is None  # only checkpoint_best.pt, which a later best overwrites
    keep = common.validation("refcoco", 25, keep_every_checkpoint=True)
    assert "train.no-epoch-checkpoints=false" in keep and "train.keep-interval-updates=-1" in keep


def test_a_pretraining_keeps_the_checkpoints_saved_whole_and_validated(tmp_path):
    import common

    save = tmp_path / "pretrain_small"
    save.mkdir()
    # killed while writing checkpoint_1_6.pt: fairseq writes it as checkpoint_1_6.pt.tmp, renamed once whole
    for name in ("checkpoint_1_2.pt", "checkpoint_1_4.pt", "checkpoint_1_6.pt.tmp", "checkpoint_last.pt"):
        (save / name).write_bytes(b"")
    (tmp_path / "pretrain_small.log").write_text(json_log(*[
        ("valid", {"epoch": 1, "valid_loss": loss, "valid_nll_loss": "1.0", "valid_num_updates": updates})
        for loss, updates in (("3.5", "2"), ("3.1", "4"), ("2.9", "6"))]))
    assert common._kept(str(save)) == [(2, 3.5, str(save / "checkpoint_1_2.pt")),
                                       (4, 3.1, str(save / "checkpoint_1_4.pt"))]


def test_validation_curve_trainable_parameters_and_test_score_from_fairseqs_output():
    import fairseq_log

    log = "\n".join([
        "2026-12-04 12:00:00 | INFO | fairseq_cli.train | num. shared model params: 4,190,344 (num. trained: 2,048)",
        "2026-12-04 12:00:05 | INFO | fairseq.trainer | begin training epoch 1",
        "2026-12-04 12:00:10 | INFO | valid | " + json.dumps({"epoch": 1, "valid_loss": "5.5", "valid_cider": "0.1",
                                                             "valid_num_updates": "1"}),
        "2026-12-04 12:00:20 | INFO | valid | " + json.dumps({"epoch": 2, "valid_cider": "0.3",
                                                             "valid_best_cider": "0.3", "valid_num_updates": "3"}),
        "2026-12-04 12:00:21 | INFO | train | " + json.dumps({"epoch": 1, "train_num_updates": "2"}),
        "Traceback (most recent call last):"])  # other lines are not records
    curve, per_epoch = fairseq_log.validation_curve(log)
    assert curve == [(1, 0.1, 5.0), (3, 0.3, 15.0)] and per_epoch == 2
    assert fairseq_log.trainable(log) == (2048, 4190344)
    generated = "Generate test with beam=5: CIDEr: 0.0123, Bleu_4: 0.0000, METEOR: 0.0296 (10 samples)\n"
    assert fairseq_log.test_score(generated, "CIDEr") == 0.0123
    assert fairseq_log.test_score(generated, "METEOR") == 0.0296
    with pytest.raises(ValueError, match="no validation scores"):
        fairseq_log.validation_curve(log.replace("valid_cider", "valid_x"))


def test_the_clean_gap_is_relative_to_prompt_tunings_score():
    import claims

    per_seed = {"image/vqa/prompt": {"0.0": [0.4, 0.6]}, "image/vqa/finetune at prompt's score": {"0.0": [0.6, 0.6]}}
    assert claims.clean_gap(per_seed, "image", "vqa") == pytest.approx(0.2)  # 0.6 against 0.5


def test_the_closest_validation_point_is_the_earliest_of_equals():
    import common

    curve = [(25, 0.2, 10.0), (50, 0.5, 20.0), (75, 0.7, 30.0), (100, 0.5, 40.0)]
    assert common.closest_point(curve, 0.45)[0] == 50  # 0.05 away, before the equal update 100
    assert common.closest_point(curve, 0.66)[0] == 75
    assert common.closest_point(curve, 0.0)[0] == 25  # below every point: the first


def test_a_claim_holds_only_where_welchs_test_finds_it():
    import claims

    assert claims.verdict([0.9, 0.91, 0.89], [0.5, 0.52, 0.48]) == "holds"
    assert claims.verdict([0.5, 0.52, 0.48], [0.9, 0.91, 0.89]) == "does not hold"
    assert claims.verdict([0.5, 0.9, 0.1], [0.52, 0.1, 0.9]).startswith("not resolved")
    # beyond one standard error of the difference, but not significant at 0.05 (t=1.22, df=4, p=0.29)
    assert claims.verdict([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]) == "not resolved (Welch's t-test p=0.29)"
    assert claims.verdict([], [0.5]) == "not measured" and claims.verdict([0.9], [0.5]) == "not measured"


def test_best_learning_rate_per_size():
    import learning_rate

    per_seed = {"micro/0.0001": [6.7, 6.8], "micro/0.0005": [7.5, 7.6], "medium/0.0002": [2.8, 2.7],
                "medium/0.0005": [2.6, 2.8]}
    best = learning_rate.best_learning_rates(per_seed)
    assert best["micro"][0] == 5e-4 and abs(best["micro"][1] - 7.55) < 1e-9
    assert best["medium"][0] == 2e-4  # 2.75 against 2.70


def test_the_scale_claim_is_flagged_when_finetuning_itself_falls_with_size():
    import claims

    def study(large_finetune):
        runs = {f"micro_matched0.9/snli_ve_finetune_u200_s{s}": 0.70 + 0.01 * s for s in (1, 2, 3)}
        runs |= {f"medium_matched0.9/snli_ve_finetune_u200_s{s}": large_finetune + 0.01 * s for s in (1, 2, 3)}
        runs |= {f"medium_matched0.9/snli_ve_prompt_u200_s{s}": 0.1 for s in (1, 2, 3)}  # other methods don't count
        return {"per_run": runs}

    caveat = claims.finetuning_falls(study(0.40), "micro", "medium")
    assert "falls with size" in caveat and "snli_ve 0.720 to 0.420" in caveat
    assert claims.finetuning_falls(study(0.80), "micro", "medium") == ""  # finetuning improves: no caveat
    assert claims.finetuning_falls(study(0.70), "micro", "medium") == ""  # within the seeds' spread


# ------------------------------------------------------------- statistics, baselines, run keys and plots (issue 36)

@pytest.mark.parametrize("t, df, cdf", [
    (12.706, 1, 0.975), (4.303, 2, 0.975), (2.776, 4, 0.975), (2.228, 10, 0.975), (1.812, 10, 0.95),
    (2.086, 20, 0.975), (3.169, 10, 0.995), (0.0, 3, 0.5), (-2.228, 10, 0.025), (1.960, 1e6, 0.975)])
def test_student_t_cdf_gives_the_table_values(t, df, cdf):
    import common

    assert common.t_cdf(t, df) == pytest.approx(cdf, abs=2e-4)


def test_student_t_cdf_of_fractional_degrees_of_freedom():
    """Welch's df are fractional: values of scipy.stats.t.cdf (not a dependency; copied here)."""
    import common

    assert common.t_cdf(1.0, 2.5) == pytest.approx(0.7979694863608632, rel=1e-10)
    assert common.t_cdf(-3.2, 7.3) == pytest.approx(0.007119834019329153, rel=1e-9)
    assert common.incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum of binomial terms
    with pytest.raises(ValueError):
        common.incomplete_beta(0.0, 1.0, 0.5)


def test_welch_statistic_degrees_of_freedom_and_verdict():
    import common

    a, b = [0.5, 0.6, 0.55], [0.3, 0.35, 0.2]
    t, df = common.welch(a, b)
    va, vb = 0.0025 / 3, 0.00583333333 / 3  # sample variances over n
    assert t == pytest.approx(0.2666666667 / math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2))
    t, df, p = common.welch_test(a, b)
    assert p == pytest.approx(0.010555091171331025, rel=1e-9)  # scipy.stats.ttest_ind(a, b, equal_var=False)
    assert common.verdict(a, b).startswith("higher (t=5.06, df=3.4, p=0.011")
    assert common.verdict(b, a).startswith("lower")
    assert common.verdict([0.5, 0.6], [0.55, 0.56]).startswith("no significant difference")
    assert common.welch([1.0, 1.0], [1.0, 1.0]) == (0.0, 2.0) and common.welch([2.0, 2.0], [1.0, 1.0])[0] == math.inf
    with pytest.raises(ValueError, match="at least two values"):
        common.welch([1.0], [1.0, 2.0])


def test_share_of_finetuning_is_measured_from_the_baseline():
    import common

    assert common.share_of_finetuning(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert common.share_of_finetuning(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # below the trivial baseline
    with pytest.raises(ValueError, match="trivial baseline"):
        common.share_of_finetuning(0.5, 0.4, 0.4)


def test_run_keys_change_with_the_source_code(tmp_path, monkeypatch):
    import common

    for folder in ("ofa_prompt", "experiments"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.py").write_text("a = 1\n")
    first = common.source_digest(str(tmp_path))
    (tmp_path / "experiments" / "x.py").write_text("a = 2\n")
    common.source_digest.cache_clear()
    assert common.source_digest(str(tmp_path)) != first
    backbone = tmp_path / "backbone.pt"
    backbone.write_text("")
    keys = set()
    for digest in ("one", "two"):
        monkeypatch.setattr(common, "source_digest", lambda: digest)
        keys.add(common.run_key(["train"], ["generate"], str(backbone)))
    assert len(keys) == 2


def _tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows))


def test_trivial_baselines_of_each_task(tmp_path):
    import baselines

    _tsv(tmp_path / "downstream_snli_ve_train.tsv", [[str(i), "0", "img", "h", "c", label]
                                                     for i, label in enumerate(["no", "yes", "no", "maybe"])])
    _tsv(tmp_path / "downstream_snli_ve_test.tsv", [[str(i), "0", "img", "h", "c", label]
                                                    for i, label in enumerate(["no", "yes", "yes", "yes"])])
    assert baselines.baseline_of(str(tmp_path), "snli_ve", "test") == 0.25
    boxes = ["0,0,10,10", "1,1,11,11", "0,0,10,10", "40,40,60,60"]  # one box is right on 3 of 4 training rows
    _tsv(tmp_path / "downstream_refcoco_train.tsv", [[str(i), "0", "the x", box, "img"] for i, box in enumerate(boxes)])
    _tsv(tmp_path / "downstream_refcoco_test.tsv", [["0", "0", "the x", "1,1,11,11", "img"],
                                                    ["1", "0", "the x", "40,40,60,60", "img"]])
    assert baselines.baseline_of(str(tmp_path), "refcoco", "test") == 0.5
    train = [("what color?", "1.0|!+red"), ("what color?", "1.0|!+red&&0.3|!+blue"), ("what color?", "1.0|!+blue"),
             ("how many?", "1.0|!+two"), ("where?", "1.0|!+left"), ("where?", "1.0|!+left")]
    _tsv(tmp_path / "downstream_vqa_train.tsv", [[str(i), "0", q, a, "o", "img"] for i, (q, a) in enumerate(train)])
    test = [("what color?", "1.0|!+red"), ("how many?", "1.0|!+three"), ("is it?", "1.0|!+left&&0.5|!+red")]
    _tsv(tmp_path / "downstream_vqa_test.tsv", [[str(i), "0", q, a, "o", "img"] for i, (q, a) in enumerate(test)])
    # red by its question; two by its question (wrong); an unseen question gets the commonest answer (red, 0.5)
    assert baselines.baseline_of(str(tmp_path), "vqa", "test") == pytest.approx(1.5 / 3)
    captions = ["a red square", "a blue circle", "a red square&&a big red square", "a green cross"]
    _tsv(tmp_path / "downstream_caption_train.tsv", [[str(i), "0", c, "o", "img"] for i, c in enumerate(captions)])
    _tsv(tmp_path / "downstream_caption_test.tsv", [["0", "0", "a red square", "o", "img"],
                                                    ["1", "1", "a blue circle", "o", "img"]])
    from ofa_prompt.metrics.caption import caption_scores

    expected = caption_scores({0: "a red square", 1: "a red square"}, {0: ["a red square"], 1: ["a blue circle"]})
    assert baselines.baseline_of(str(tmp_path), "caption", "test") == pytest.approx(expected["CIDEr"])


def test_log_axes_are_labelled_at_the_data_and_baselines_drawn(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import common

    fig, ax = plt.subplots()
    xs = [4190344, 5587308, 11333216]
    common.plot(None, "t", {"prompt": common.Series(xs, [[0.1, 0.2], [0.3], [0.5]])}, "parameters", "share",
                logx=True, axes=ax, baseline=0.25)
    fig.canvas.draw()
    assert list(ax.get_xticks()) == xs and [t.get_text() for t in ax.get_xticklabels()] == ["4.19M", "5.59M", "11.3M"]
    assert not ax.xaxis.get_minor_ticks() or not any(t.get_text() for t in ax.xaxis.get_minorticklabels())
    line = [ln for ln in ax.lines if ln.get_label() == "trivial baseline"]
    assert line and list(line[0].get_ydata()) == [0.25, 0.25]
    assert ax.get_legend()._loc == 2 and ax.get_legend().get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1  # beside the axes
    plt.close(fig)


def _stored_study(out, command, data):
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(data))
    (out / "results.md").write_text(f"# old\n\nnote\n\nMade with `{command}`.\n\n| a |\n|---|\n")


def test_tables_and_plots_remade_from_stored_results(tmp_path):
    """--from-results: the stored per-seed scores, the run's own settings (its results.md's command), shares from
    the trivial baseline and Welch's verdicts; no training."""
    import baselines
    import compare_methods
    import scale

    cm = tmp_path / "compare_methods"
    per_seed = {f"snli_ve/{m}": dict(score=s, best_valid=[0.5, 0.5], updates_to_best=[3, 3], seconds=[1.0, 1.0],
                                     trainable="1 (1%)")
                for m, s in (("finetune", [0.9, 0.92]), ("prompt", [0.6, 0.64]))}
    _stored_study(cm, "python experiments/compare_methods.py --quick --tasks snli_ve --seeds 1 2",
                  dict(header=[], rows=[], per_seed=per_seed, seeds=[1, 2], size="micro"))
    compare_methods.main(["--from-results", "--out", str(cm)])
    data = table(cm)
    base = baselines.baseline("snli_ve", "test", quick=True)
    assert data["baselines"] == {"snli_ve": base} and data["rows"][0][1].startswith("trivial baseline")
    prompt = data["rows"][2]
    expected = [(p - base) / (f - base) for p, f in zip([0.6, 0.64], [0.9, 0.92])]
    assert data["per_seed"]["snli_ve/prompt"]["share"] == pytest.approx(expected)
    assert prompt[5].startswith("below finetuning (t=")
    made = (cm / "results.md").read_text()
    assert "Made with `python experiments/compare_methods.py --quick --tasks snli_ve --seeds 1 2`; table and plots " \
           "remade from its results.json with `python experiments/compare_methods.py --from-results" in made
    assert (cm / "methods.png").is_file()

    sc = tmp_path / "scale"
    per_run = {f"{size}/snli_ve_{m}_u3_s{s}": score for size, off in (("micro", 0.0), ("small", 0.05))
               for m, scores in (("finetune", [0.9, 0.92]), ("prompt", [0.6, 0.66])) for s, score in
               zip((1, 2), [v + off for v in scores])}
    _stored_study(sc, "python experiments/scale.py --quick --sizes micro small --tasks snli_ve --methods finetune "
                      "prompt --pretraining final --seeds 1 2",
                  dict(header=[], rows=[], params={"micro": 100, "small": 200}, seeds=[1, 2], per_run=per_run))
    pooled = scale.main(["--from-results", "--out", str(sc)])
    assert pooled["prompt"]["micro"] == pytest.approx([(0.6 - base) / (0.9 - base), (0.66 - base) / (0.92 - base)])
    assert [r[3] for r in table(sc)["rows"]] == ["trivial baseline", "finetune", "prompt"] * 2


def test_remedy_rows_test_each_remedy_against_plain_prompt_tuning_and_state_the_goal(tmp_path):
    """Every docs/convergence/remedies*/ folder gives a row per remedy (Welch against plain prompt tuning's test
    scores) and one goal row per task: met only by a remedy whose seeds reach 95% of finetuning within 2x its
    updates."""
    import claims

    def study(task, fast):
        row = [task, "prompt, gate", "3/3" if fast else "0/3", "-", "-", "-", "0.7", "0.7", "0.8 ± 0.01",
               "yes" if fast else "no", "-"]
        return {"seeds": [1, 2, 3], "rows": [[task, "finetune", "3/3", "50", "1.0x", "-", "0.9 ± 0.0", "0.9", "0.9",
                                              "-", "-"], row],
                "per_seed": {f"{task}/prompt, random": {"test": [0.5, 0.52, 0.48]},
                             f"{task}/prompt, gate": {"test": [0.8, 0.81, 0.79]}}}

    for folder, task, fast in (("remedies", "caption", False), ("remedies_refcoco", "refcoco", True)):
        (tmp_path / "convergence" / folder).mkdir(parents=True)
        (tmp_path / "convergence" / folder / "results.json").write_text(json.dumps(study(task, fast)))
    rows = claims.remedy_rows(str(tmp_path))
    assert [r[0] for r in rows] == [
        "Remedy 'gate' improves prompt tuning (caption)",
        "A remedy brings prompt tuning to 95% of finetuning within 2x its updates (caption)",
        "Remedy 'gate' improves prompt tuning (refcoco)",
        "A remedy brings prompt tuning to 95% of finetuning within 2x its updates (refcoco)"]
    assert rows[0][3] == "holds" and "0.5000 ± 0.0200" in rows[0][2]
    assert rows[1][3] == "not met" and rows[3][3] == "met" and "met by: gate" in rows[3][2]


def test_slow_convergence_is_tested_only_where_prompt_tuning_reaches_the_target():
    import claims

    assert claims.convergence_verdict("0/3", "-").startswith("not tested")  # a lower plateau
    assert claims.convergence_verdict("2/3", "1.5x").startswith("not resolved")
    assert claims.convergence_verdict("3/3", "1.8x") == "holds"
    assert claims.convergence_verdict("3/3", "0.9x") == "does not hold"


def test_the_learning_rate_grid_chooses_each_methods_rate_on_validation_and_reports_its_test_scores():
    """--lr-grid: every rate of the method's grid is run, the row takes the rate with the best mean validation
    score (not the best test score), and the table says which rate, each rate's validation and whether the chosen
    one is at the grid's edge; without the grid, the method's own rate alone."""
    import common
    import compare_methods

    assert compare_methods.chosen_lr({0.1: [0.5, 0.7], 0.3: [0.6, 0.5], 0.03: [0.2, 0.2]}) == 0.1
    assert compare_methods.chosen_lr({0.3: [0.5], 0.1: [0.5]}) == 0.1  # a tie: the smaller rate
    grid = compare_methods.method_runs(["refcoco"], ["prompt"], [1, 2], 200, 25, lr_grid=True)
    assert len(grid) == 6 and {r.options[-1] for r in grid} == {f"train.lr={x:g}" for x in common.LR_GRIDS["prompt"]}
    assert compare_methods.method_runs(["refcoco"], ["prompt"], [1, 2], 200, 25) == [
        common.method_run("refcoco", "prompt", 200, 25, s) for s in (1, 2)]

    valid = {0.03: 0.4, 0.1: 0.6, 0.3: 0.5}  # best validation per rate; test scores the other way round
    test = {0.03: 0.9, 0.1: 0.3, 0.3: 0.8}
    results = {run: dict(score=test[lr] + run.seed / 100, curve=[[100, 0.1], [200, valid[lr]]], seconds=1.0,
                         trained=10, total=1000)
               for lr in common.LR_GRIDS["prompt"] for run in
               [common.lr_run("refcoco", "prompt", lr, 200, 25, s) for s in (1, 2)]}
    per_seed = compare_methods.per_seed_values(results, ["refcoco"], ["prompt"], [1, 2], 200, 25, lr_grid=True)
    v = per_seed["refcoco/prompt"]
    assert v["lr"] == 0.1 and v["score"] == pytest.approx([0.31, 0.32]) and v["best_valid"] == [0.6, 0.6]
    assert v["grid"]["0.3"] == dict(best_valid=[0.5, 0.5], score=pytest.approx([0.81, 0.82]))
    assert compare_methods.rate_column(v, "prompt") == "0.1; validation 0.03: 0.4000, 0.1: 0.6000, 0.3: 0.5000"
    v["lr"] = 0.3
    assert compare_methods.rate_column(v, "prompt").startswith("0.3 (the grid's edge); ")
    assert compare_methods.rate_column({}, "prompt") == "0.03"  # a row made before the grid: METHODS' rate

    rows = compare_methods.summarize(per_seed, ["refcoco"], ["prompt"], {"refcoco": 0.2}, 200)
    assert rows[1][-1] == "2/2"  # both seeds' best validation came at the last update: the budget stopped them

    # --extra-seeds: run at the rate seeds 1 and 2 chose, added to the row, not to the choice
    results[common.lr_run("refcoco", "prompt", 0.1, 200, 25, 3)] = dict(score=0.5, curve=[[100, 0.9]], seconds=1.0,
                                                                         trained=10, total=1000)
    v = compare_methods.per_seed_values(results, ["refcoco"], ["prompt"], [1, 2], 200, 25, lr_grid=True,
                                        extra_seeds=[3])["refcoco/prompt"]
    assert v["lr"] == 0.1 and v["score"] == pytest.approx([0.31, 0.32, 0.5]) and v["updates_to_best"] == [200, 200, 100]
    assert v["grid"]["0.1"]["best_valid"] == [0.6, 0.6]


def test_results_record_the_code_version_of_their_runs_and_claims_lists_them(tmp_path, monkeypatch):
    """save_results writes the source digest; a table remade from results.json keeps the stored one; claims.py
    says which studies this code made. claims.py itself is not part of the digest (it makes no run)."""
    import claims
    import common

    for folder in ("ofa_prompt", "experiments"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.py").write_text("a = 1\n")
    (tmp_path / "experiments" / "claims.py").write_text("table = 1\n")
    common.source_digest.cache_clear()
    first = common.source_digest(str(tmp_path))
    (tmp_path / "experiments" / "claims.py").write_text("table = 2\n")
    common.source_digest.cache_clear()
    assert common.source_digest(str(tmp_path)) == first
    common.source_digest.cache_clear()

    monkeypatch.setattr(common, "source_digest", lambda: "new")
    monkeypatch.setattr(claims, "source_digest", lambda: "new")
    docs = tmp_path / "docs"
    common.save_results(str(docs / "a"), "A", [], [], "note", "python experiments/a.py", dict(seeds=[1]))
    assert json.loads((docs / "a" / "results.json").read_text())["code"] == "new"
    _stored_study(docs / "b", "python experiments/b.py", dict(seeds=[1, 2], code="old"))
    common.save_results(str(docs / "b"), "B", [], [], "note", "python experiments/b.py`; table and plots remade "
                        "from its results.json with `python experiments/b.py --from-results", dict(seeds=[1, 2]))
    assert json.loads((docs / "b" / "results.json").read_text())["code"] == "old"
    assert claims.provenance(str(docs)) == "Studies made by this code version (new): a. By earlier code: b."


def test_the_comparison_claim_says_how_many_runs_the_budget_stopped_at_their_best():
    import claims

    compare = {"header": ["task", "method", "seeds best at the last update"],
               "rows": [["a", "trivial baseline: x", "-"], ["a", "finetune", "1/3"], ["a", "prompt", "2/3"],
                        ["b", "prompt", "3/3"], ["b", "bitfit", "3/3"]]}
    assert claims.stopped_by_budget(compare) == \
        "; best validation at the last update in 1/3 runs of finetune, 5/6 runs of prompt"
    assert claims.stopped_by_budget({"header": ["task", "method"], "rows": []}) == ""  # made before the column
