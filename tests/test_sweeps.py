"""Comparison sweeps: the multirun comparison (files and W&B), failed jobs, Optuna and SLURM configs."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_train_e2e import SHRUNK, run_module
from wandb_records import history_keys, read_records, run_info

from noodlenext.callbacks.significance import mcnemar_exact, paired_t_test, verdict
from noodlenext.callbacks.sweep_comparison import ERROR_FILE, write_comparison
from noodlenext.callbacks.test_predictions import predictions_csv
from noodlenext.runs.task import keep_sweeping

SEARCH_SPACE = {
    "model.optim.backbone_lr": "tag(log, interval(1e-6, 1e-4))",
    "model.optim.head_lr": "tag(log, interval(1e-5, 1e-2))",
    "model.optim.weight_decay": "tag(log, interval(1e-3, 0.1))",
    "model.label_smoothing": "interval(0.0, 0.3)",
    "model.optim.layer_decay": "interval(0.6, 1.0)",
}
MODELS = {"convnext_atto.d2_in1k", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"}


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


# --- the comparison from job directories (no training) ---------------------------------------------


def fake_job(
    sweep: Path, num: int, overrides: list[str], metrics: dict | None, error: str | None = None
) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"model": {"name": "vit"}}), job / ".hydra" / "config.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / ERROR_FILE).write_text(json.dumps({"error": error, "traceback": "..."}))


def metrics(model: str, acc: float, ramen: float) -> dict:
    return {
        "model": model,
        "params": 1000,
        "pretrained": False,
        "test/acc": acc,
        "test/f1": acc - 0.1,
        "test/acc_per_class": {"spaghetti": acc, "ramen": ramen},
        "best_epoch": 3,
        "train/time_s": 10.0,
        "train/images_per_s": 50.0,
    }


def test_seeds_aggregate_to_mean_and_std_and_failed_jobs_keep_their_error(tmp_path: Path) -> None:
    fake_job(tmp_path, 0, ["x=1", "model=cnn", "seed=1"], metrics("cnn", 0.8, 0.6))
    fake_job(tmp_path, 1, ["x=1", "model=cnn", "seed=2"], metrics("cnn", 0.9, 0.8))
    fake_job(tmp_path, 2, ["x=1", "model=vit", "seed=1"], metrics("vit", 0.5, 0.5))
    fake_job(tmp_path, 3, ["x=1", "model=vit", "seed=2"], None, error="RuntimeError: out of memory")
    fake_job(tmp_path, 10, ["x=1", "model=oops", "seed=1"], None)  # killed: neither file
    (tmp_path / "optimization_results.yaml").write_text("best: 1\n")  # not a job

    write_comparison(tmp_path)
    summary = read_csv(tmp_path / "comparison.csv")
    assert [(r["model"], r["config"], r["runs"], r["ok"], r["status"]) for r in summary] == [
        ("cnn", "model=cnn", "2", "2", "ok"),
        ("vit", "model=vit", "2", "1", "partly failed"),
        ("vit", "model=oops", "1", "0", "failed"),
    ]
    assert float(summary[0]["test_acc"]) == pytest.approx(0.85)
    assert float(summary[0]["test_acc_std"]) == pytest.approx(0.0707, abs=1e-4)
    assert float(summary[0]["acc_ramen"]) == pytest.approx(0.7)
    assert summary[1]["error"] == "job 3: RuntimeError: out of memory"
    assert "job 10: no metrics.json" in summary[2]["error"]
    runs = read_csv(tmp_path / "runs.csv")
    assert [r["job"] for r in runs] == ["0", "1", "2", "3", "10"]
    assert [r["status"] for r in runs] == ["ok", "ok", "ok", "failed", "failed"]
    md = (tmp_path / "comparison.md").read_text()
    assert "| cnn | model=cnn | 2/2 | 1,000 | False | 85.00 ± 7.07% | 85.00 ± 7.07% | 70.00 ± 14.14% |" in md
    assert "| vit | model=vit | 1/2 |" in md and "RuntimeError: out of memory" in md
    assert (tmp_path / "comparison.png").stat().st_size > 5000


# --- is the difference real? ------------------------------------------------------------------------


def test_mcnemar_exact_matches_hand_computed_binomial_tails() -> None:
    # two-sided exact p = 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)  # 0.0215
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 0.0386
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 2**6)  # 0.031: 6-0 is significant ...
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)  # 0.0625: ... 5-0 is not
    assert mcnemar_exact(5, 5) == mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_t_test_matches_the_hand_computed_value() -> None:
    # differences 0.10, 0.05, 0.05: mean 1/15, sd 0.02887, t = 4.0 with 2 df: p = 1 - t / sqrt(t^2 + 2)
    p = paired_t_test([0.80, 0.90, 0.85], [0.70, 0.85, 0.80])
    assert p == pytest.approx(1 - 4 / 18**0.5, rel=1e-6)  # 0.0572
    assert paired_t_test([0.8], [0.7]) is None  # one seed: no spread to test against
    assert paired_t_test([0.8, 0.9], [0.7, 0.8]) is None  # equal differences: t undefined
    assert paired_t_test([0.8, 0.9], [0.8, 0.9]) == 1.0
    assert verdict("vit", "convnext", 2.0, 0.41, "McNemar") == (
        "vit − convnext = +2.0 points, p = 0.41 (McNemar): not significant at 0.05 — could be noise"
    )
    assert verdict("vit", "convnext", -3.5, 0.0004, "t").endswith("p < 0.001 (t): significant at 0.05")


def prediction_job(
    sweep: Path, num: int, model: str, seed: int, labels: list[str], preds: list[str], images: list[Path]
) -> None:
    """A job dir as a real run leaves it: overrides, metrics.json and test_predictions.csv."""
    acc = sum(a == b for a, b in zip(labels, preds, strict=True)) / len(labels)
    fake_job(sweep, num, [f"model={model}", f"seed={seed}"], metrics(model, acc, acc))
    rows = [
        {"file": f"test/{im.name}", "path": str(im), "label": y, "pred": p, "probs": [1.0, 0.0]}
        for im, y, p in zip(images, labels, preds, strict=True)
    ]
    (sweep / str(num) / "test_predictions.csv").write_text(predictions_csv(rows, ["spaghetti", "ramen"]))


@pytest.fixture
def test_images(tmp_path: Path) -> list[Path]:
    from conftest import write_image

    return [write_image(tmp_path / "data" / "test" / f"{i:02d}.png", seed=i) for i in range(20)]


def test_one_seed_each_is_compared_by_mcnemar_with_the_disagreeing_images(
    tmp_path: Path, test_images: list[Path]
) -> None:
    sweep = tmp_path / "sweep"
    labels = ["spaghetti"] * 10 + ["ramen"] * 10
    flip = {"spaghetti": "ramen", "ramen": "spaghetti"}
    # 20 images: both right on 12, both wrong on 2; 5 only cnn gets right, 1 only vit
    cnn = [flip[y] if i in (0, 1, 5) else y for i, y in enumerate(labels)]
    vit = [flip[y] if i in (0, 1, 2, 3, 4, 6, 7) else y for i, y in enumerate(labels)]
    vit[5] = labels[5]
    prediction_job(sweep, 0, "cnn", 1, labels, cnn, test_images)
    prediction_job(sweep, 1, "vit", 1, labels, vit, test_images)
    write_comparison(sweep)
    md = (sweep / "comparison.md").read_text()
    p = 2 * (1 + 6) / 2**6  # b = 5, c = 1: 0.22
    assert (
        f"**cnn − vit = +20.0 points, p = {p:.2g} (McNemar exact, 20 paired test images, one seed): "
        "not significant at 0.05 — could be noise**"
    ) in md
    assert "| seed=1 | 0, 1 | 85.00% | 65.00% | 20 | 5 | 1 | 0.22 |" in md
    assert "one seed: McNemar compares these two trained models" in md
    (row,) = read_csv(sweep / "significance.csv")
    assert float(row["p"]) == pytest.approx(p) and row["significant"] == "False"
    # the images one gets right and the other wrong, as thumbnails next to the markdown
    assert "cnn right, vit wrong (seed=1; 5 of 5 shown):" in md and "vit right, cnn wrong" in md
    assert "| ![](disagreements/0_a_0.png) | test/02.png | spaghetti | spaghetti | ramen |" in md
    thumbs = sorted(p.name for p in (sweep / "disagreements").glob("*.png"))
    assert thumbs == [f"0_a_{i}.png" for i in range(5)] + ["0_b_0.png"]


def test_several_seeds_are_compared_by_a_paired_t_test_matched_by_seed(
    tmp_path: Path, test_images: list[Path]
) -> None:
    sweep = tmp_path / "sweep"
    labels = ["spaghetti"] * 10 + ["ramen"] * 10
    wrong = {"spaghetti": "ramen", "ramen": "spaghetti"}

    def preds(n_wrong: int) -> list[str]:
        return [wrong[y] if i < n_wrong else y for i, y in enumerate(labels)]

    # per seed (1, 2, 3) accuracies: cnn 80, 90, 85 %, vit 70, 85, 80 %: the hand-computed t-test above
    for num, (model, seed, n_wrong) in enumerate(
        [("cnn", 1, 4), ("vit", 3, 4), ("cnn", 2, 2), ("vit", 1, 6), ("cnn", 3, 3), ("vit", 2, 3)]
    ):
        prediction_job(sweep, num, model, seed, labels, preds(n_wrong), test_images)
    write_comparison(sweep)
    md = (sweep / "comparison.md").read_text()
    assert (
        f"**cnn − vit = +6.7 points, p = {1 - 4 / 18**0.5:.2g} (paired t-test over 3 seeds): "
        "not significant at 0.05 — could be noise**"
    ) in md
    assert "| seed=2 | 2, 5 | 90.00% | 85.00% | 20 |" in md  # matched by seed, not by job order
    assert "| cnn | model=cnn | 3/3 |" in md and "85.00 ± 5.00%" in md


def test_keep_sweeping_reraises_outside_a_multirun() -> None:
    def boom(cfg: object) -> None:
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        keep_sweeping(boom)(None)


# --- configs ---------------------------------------------------------------------------------------


def test_vit_vs_convnext_sweeps_both_models_alike_each_with_its_own_settings(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=vit_vs_convnext"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params.model == "convnext_base,vit_base"
    assert list(cfg.hydra.callbacks.sweep_comparison.values()) == [
        "noodlenext.callbacks.sweep_comparison.SweepComparison"
    ]
    jobs = {
        m: compose_cfg("train", ["experiment=vit_vs_convnext", f"model={m}"])
        for m in ("convnext_base", "vit_base")
    }
    for key in (
        "seed",
        "data.split_seed",
        "data.augment",
        "data.batch_size",
        "trainer.max_epochs",
        "data.root",
    ):
        assert len({str(OmegaConf.select(c, key)) for c in jobs.values()}) == 1, key
    conv, vit = jobs["convnext_base"], jobs["vit_base"]
    assert conv.data.image_size == conv.model.image_size and vit.data.image_size == vit.model.image_size
    assert (conv.model.mean, vit.model.mean) == ([0.485, 0.456, 0.406], [0.5, 0.5, 0.5])
    assert conv.explain.target_layer is None  # per-architecture default layer (noodlenext.explain.layers)
    assert conv.logger.wandb.group == vit.logger.wandb.group and conv.logger.wandb.group.startswith(
        "vit_vs_convnext_"
    )


def test_optuna_search_space_and_budget(compose_cfg) -> None:
    cfg = compose_cfg("train", ["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.direction, sweeper.n_trials, sweeper.n_jobs) == ("maximize", 20, 1)
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 1234
    assert cfg.optimized_metric == "val/acc_best"
    assert dict(sweeper.params) == SEARCH_SPACE
    for key in sweeper.params:  # every searched key exists in the model config
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key


def test_slurm_launcher_builds_the_sbatch_script(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    import submitit
    from hydra.types import HydraContext
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "train",
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=a100",
            "hydra.launcher.mem_gb=32",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(
        hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=print, config=cfg
    )
    submitted = {}

    def map_array(executor: submitit.AutoExecutor, fn: object, *args: object) -> list:
        submitted.update(executor=executor, jobs=len(args[0]))
        return []  # no cluster here: nothing is submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    srun = tmp_path / "bin" / "srun"  # submitit refuses to build a SLURM executor without srun on PATH
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    launcher.launch([["model=convnext_base"], ["model=vit_base"]], initial_job_idx=0)
    assert submitted["jobs"] == 2
    sbatch = submitted["executor"]._executor._make_submission_file_text("python -m noodlenext.train", "uid")
    for line in (
        "--partition=a100",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--time=240",
        "--nodes=1",
        "--ntasks-per-node=1",
    ):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert submitted["executor"]._executor.parameters["array_parallelism"] == 8  # --array=0-1%8
    assert str(tmp_path / "sweep" / ".submitit") in sbatch


# --- real multiruns ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, synthetic_noodles: Path) -> Path:
    """Two models x two seeds of the shrunk quickstart, one multirun (`python -m noodlenext.train -m`)."""
    work = tmp_path_factory.mktemp("sweep")
    sweep_dir = work / "multirun"
    run_module(
        "noodlenext.train",
        "-m",
        "experiment=quickstart",
        "model=convnext_atto,vit_tiny",
        "seed=1,2",
        "llm=none",
        f"data.root={synthetic_noodles}",
        *SHRUNK,
        "trainer.max_epochs=2",
        "callbacks.heatmap_gallery=null",
        "callbacks.mistakes=null",  # what the mistakes have in common: tests/test_mistakes.py
        f"hydra.sweep.dir={sweep_dir}",
        "tags=[sweep]",
        cwd=work,
    )
    return sweep_dir


@pytest.mark.slow
def test_multirun_writes_a_comparison_of_models_over_seeds(sweep: Path) -> None:
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]  # one sweep directory, a job folder each
    assert {json.loads((job / "metrics.json").read_text())["model"] for job in jobs} == MODELS
    summary = read_csv(sweep / "comparison.csv")
    assert {r["model"] for r in summary} == MODELS
    assert {r["config"] for r in summary} == {"model=convnext_atto", "model=vit_tiny"}
    for r in summary:
        assert (r["runs"], r["ok"], r["status"], r["pretrained"]) == ("2", "2", "ok", "False")
        assert int(r["params"]) > 100_000 and float(r["train_time_s"]) > 0 and float(r["images_per_s"]) > 0
        assert 0 <= float(r["test_acc"]) <= 1 and r["test_acc_std"] != ""
        assert {"acc_spaghetti", "acc_ramen", "acc_udon", "macro_f1", "best_epoch"} <= set(r)
    runs = read_csv(sweep / "runs.csv")
    assert sorted((r["config"], r["seed"]) for r in runs) == [
        (f"model={m}", s) for m in ("convnext_atto", "vit_tiny") for s in ("1", "2")
    ]
    job = json.loads((sweep / "0" / "metrics.json").read_text())
    assert job["best_epoch"] in (0, 1) and job["train/images_per_s"] > 0
    md = (sweep / "comparison.md").read_text()
    assert md.count(" ± ") >= 2 and "vit_tiny_patch16_224" in md
    assert (sweep / "comparison.png").stat().st_size > 5000
    # each job's per-image test predictions, paired across the models seed by seed
    tested = read_csv(sweep / "0" / "test_predictions.csv")
    assert len(tested) == sum(
        json.loads((sweep / "0" / "metrics.json").read_text())["test/count_per_class"].values()
    )
    assert {r["file"].split("/")[0] for r in tested} == {"test"} and all(
        Path(r["path"]).is_file() for r in tested
    )
    assert "## Is the difference real?" in md and "(paired t-test over 2 seeds)" in md
    (row,) = read_csv(sweep / "significance.csv")
    assert {row["a"], row["b"]} == {"convnext_atto", "vit_tiny"} and row["seeds"] == "2"
    assert ("not significant at 0.05 — could be noise" in row["verdict"]) == (row["significant"] == "False")


@pytest.mark.slow
def test_multirun_comparison_goes_to_wandb_in_the_jobs_group(sweep: Path) -> None:
    (comparison_file,) = (sweep / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_records(comparison_file)
    info = run_info(records)
    assert info.job_type == "comparison" and info.run_group == "quickstart"
    keys = history_keys(records)
    assert any(k.startswith("comparison/summary") for k in keys) and any(
        k.startswith("comparison/runs") for k in keys
    )
    assert any(k.startswith("comparison/per_class_accuracy") for k in keys)
    assert any(k.startswith("comparison/significance") for k in keys)
    for job in ("0", "3"):
        (job_file,) = (sweep / job / "wandb").glob("offline-run-*/run-*.wandb")
        assert run_info(read_records(job_file)).run_group == info.run_group


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path, synthetic_noodles: Path) -> None:
    out = tmp_path / "multirun"
    run_module(
        "noodlenext.train",
        "-m",
        "experiment=quickstart",
        "model.name=no_such_model,convnext_atto.d2_in1k",
        "debug=default",
        "llm=none",
        "callbacks.mistakes=null",
        f"data.root={synthetic_noodles}",
        *SHRUNK,
        "callbacks.heatmap_gallery=null",
        f"hydra.sweep.dir={out}",
        cwd=tmp_path,
    )
    assert "no_such_model" in json.loads((out / "0" / ERROR_FILE).read_text())["error"]
    assert (out / "1" / "metrics.json").is_file()  # the job after the failure still ran
    failed, ok = read_csv(out / "comparison.csv")
    assert (failed["status"], failed["ok"], ok["status"]) == ("failed", "0", "ok")
    assert failed["config"] == "model.name=no_such_model" and "no_such_model" in failed["error"]
    assert "| failed |" in (out / "comparison.md").read_text()


@pytest.mark.slow
def test_optuna_runs_trials_and_reports_the_best(tmp_path: Path, synthetic_noodles: Path) -> None:
    out = tmp_path / "optuna"
    run_module(
        "noodlenext.train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "experiment=quickstart",
        "logger=none",
        "llm=none",
        f"data.root={synthetic_noodles}",
        *SHRUNK,
        "trainer.max_epochs=1",
        "callbacks.heatmap_gallery=null",
        "callbacks.mistakes=null",
        f"hydra.sweep.dir={out}",
        cwd=tmp_path,
    )
    best = OmegaConf.load(out / "optimization_results.yaml")
    assert set(best.best_params) == set(SEARCH_SPACE) and 0 <= best.best_value <= 1
    assert 1e-6 <= best.best_params["model.optim.backbone_lr"] <= 1e-4
    trials = read_csv(out / "comparison.csv")
    assert len(trials) == 2 and all(
        "model.optim.head_lr=" in t["config"] and t["val_acc_best"] for t in trials
    )


@pytest.mark.slow
def test_the_sweep_command_rebuilds_the_comparison_of_a_finished_sweep(sweep: Path, tmp_path: Path) -> None:
    """`python -m noodlenext.sweep <sweep dir>` (its main, in this process) on a copy of the sweep with
    the comparison gone: the same comparison again, from the jobs' files alone."""
    from noodlenext.sweep import main

    copy = tmp_path / "multirun"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("wandb", ".submitit"))
    written = ("comparison.md", "comparison.csv", "runs.csv", "significance.csv", "comparison.png")
    for name in written:
        (copy / name).unlink()
    shutil.rmtree(copy / "disagreements", ignore_errors=True)
    main([str(copy)])
    for name in ("comparison.csv", "significance.csv"):
        assert read_csv(copy / name) == read_csv(sweep / name), name
    assert [r["job"] for r in read_csv(copy / "runs.csv")] == [r["job"] for r in read_csv(sweep / "runs.csv")]
    assert "## Is the difference real?" in (copy / "comparison.md").read_text()
    assert (copy / "comparison.png").stat().st_size > 5000
    with pytest.raises(SystemExit, match="usage: python -m noodlenext.sweep <sweep dir>"):
        main([str(tmp_path / "nowhere")])
