"""Faults and more than one process: kill and resume, atomic saves, out of memory, DDP test metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch
from conftest import run_main
from omegaconf import DictConfig
from test_train_e2e import SHRUNK, run_module
from wandb_records import history_keys, read_records, run_info

import noodlenext.eval
from noodlenext.core import files
from noodlenext.core.files import clean_stale_temps, write_json_atomic
from noodlenext.models.classifier import NoodleClassifier
from noodlenext.runs.checkpoint_io import is_complete_checkpoint
from noodlenext.runs.resume import find_last_checkpoint
from noodlenext.train import train

TESTS = Path(__file__).resolve().parent
FAST = [*SHRUNK, "llm=none"]


def env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    for name in ("WANDB_API_KEY", "WANDB_SERVICE"):  # its own W&B service, never this process's
        env.pop(name, None)
    return env


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------ kill and resume
def steps_per_epoch(cfg: DictConfig) -> int:
    """Optimizer steps in one epoch of the run `cfg` describes: its data module's training batches."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return len(datamodule.train_dataloader())


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_ends_like_an_uninterrupted_run(
    tmp_path: Path, synthetic_noodles: Path, compose_cfg
) -> None:
    common = [
        "experiment=quickstart",
        f"data.root={synthetic_noodles}",
        *FAST,
        "trainer.max_epochs=3",
        "callbacks.heatmap_gallery=null",
        "callbacks.mistakes=null",
    ]
    # An uninterrupted run ends at epoch 2 after 3 epochs' steps (no gradient accumulation).
    whole = {"epoch": 2, "global_step": 3 * steps_per_epoch(compose_cfg("train", common))}
    outputs = tmp_path / "outputs" / "quickstart"
    killed, progress, log = outputs / "killed", tmp_path / "progress.txt", tmp_path / "killed.log"
    wait = ["+callbacks.kill._target_=fault_callbacks.WaitForKill", f"+callbacks.kill.progress={progress}"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "noodlenext.train", *common, *wait, f"hydra.run.dir={killed}"],
            cwd=tmp_path, env=env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not progress.is_file():  # epoch 1's first step is done, and the run waits there
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    at_kill = load(killed / "checkpoints" / "last.ckpt")
    assert at_kill["epoch"] == 0 and at_kill["global_step"] < int(progress.read_text().split()[1])

    # What a kill mid-save leaves (core.files' temp name: host, the dead pid, its start time, random).
    leftover = killed / "checkpoints" / f".last.ckpt.{files._HOST}-{proc.pid}-1-k2j4_x9a.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")

    # No hydra.run.dir: resume=auto picks the newest last.ckpt under outputs/quickstart/, i.e. killed/.
    resumed = run_module("noodlenext.train", *common, "resume=auto", cwd=tmp_path)
    assert (
        f"resume=auto: resuming from {killed / 'checkpoints' / 'last.ckpt'}"
        in resumed.stdout + resumed.stderr
    )
    final = load(killed / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (whole["epoch"], whole["global_step"])
    assert final["global_step"] > at_kill["global_step"]
    assert not leftover.exists()  # cleaned when the resumed run started
    assert (killed / "metrics.json").is_file()
    (new_dir,) = [p for p in outputs.iterdir() if p.name != "killed"]  # holds only the resume's log
    assert not (new_dir / "checkpoints").exists() and not (new_dir / "metrics.json").exists()
    # Both processes write the same W&B run, whose id the checkpoints store. (The killed process's
    # offline file holds only what W&B flushed before the kill: here, nothing.)
    stored = at_kill["noodlenext"]["config"]["logger"]["wandb"]["id"]
    runs = sorted(killed.glob("wandb/offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in runs] == [stored, stored]
    assert run_info(read_records(next(runs[-1].glob("run-*.wandb")))).run_id == stored
    assert final["noodlenext"]["config"]["logger"]["wandb"]["id"] == stored


def test_resume_auto_skips_a_truncated_checkpoint_and_prefers_the_given_run_dir(tmp_path: Path) -> None:
    good, cut, here = (tmp_path / "outputs" / name / "checkpoints" / "last.ckpt" for name in ("a", "b", "c"))
    for path in (good, cut):
        path.parent.mkdir(parents=True)
        torch.save({"epoch": 0}, path)
    cut.write_bytes(cut.read_bytes()[:-40])  # newer, but cut short
    assert not is_complete_checkpoint(cut)
    assert find_last_checkpoint(here.parent.parent, siblings=True) == good
    assert find_last_checkpoint(here.parent.parent, siblings=False) is None  # hydra.run.dir given
    here.parent.mkdir(parents=True)
    torch.save({"epoch": 1}, here)
    os.utime(good)  # newest, yet the run dir's own last.ckpt wins
    assert find_last_checkpoint(here.parent.parent, siblings=True) == here


# ------------------------------------------------------------------------------ atomic saves
@pytest.mark.slow
def test_a_kill_mid_save_leaves_the_previous_checkpoint_and_metrics(tmp_path: Path) -> None:
    def killed_while_saving(mode: str, path: Path) -> None:
        proc = subprocess.run(
            [sys.executable, str(TESTS / "kill_mid_save.py"), mode, str(path)],
            env=env(),
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    naive = tmp_path / "naive" / "last.ckpt"
    naive.parent.mkdir()
    torch.save({"epoch": 0}, naive)
    killed_while_saving("torch", naive)
    assert not is_complete_checkpoint(naive)  # the harness does kill mid-save

    ckpt = tmp_path / "atomic" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0}, ckpt)
    killed_while_saving("atomic", ckpt)
    assert load(ckpt) == {"epoch": 0} and [p.name for p in ckpt.parent.glob("*.ckpt")] == ["last.ckpt"]
    (leftover,) = ckpt.parent.glob(".last.ckpt.*.tmp")  # the kill could not clean up its temp file ...
    assert clean_stale_temps(ckpt.parent) == [leftover]  # ... the next start does (train, at start)
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.ckpt"]

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"test/acc": 0.25}')
    killed_while_saving("json", metrics)
    assert json.loads(metrics.read_text()) == {"test/acc": 0.25}
    assert len(list(tmp_path.glob(".metrics.json.*.tmp"))) == 1
    write_json_atomic(metrics, {"test/acc": 0.5})  # the next write into the folder cleans it up
    assert json.loads(metrics.read_text()) == {"test/acc": 0.5} and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------ out of memory
def test_out_of_memory_names_the_batch_size_and_the_overrides_to_try(
    tmp_path: Path, compose_cfg, synthetic_noodles: Path
) -> None:
    cfg = compose_cfg(
        "train",
        [
            "experiment=quickstart",
            f"data.root={synthetic_noodles}",
            *FAST,
            "logger=none",
            "+trainer.accumulate_grad_batches=2",
            "+callbacks.oom._target_=fault_callbacks.OutOfMemoryInForward",
        ],
    )
    with pytest.raises(torch.OutOfMemoryError) as raised:
        train(cfg)
    message = str(raised.value)
    assert "data.batch_size=8" in message and "Tried to allocate 2.00 GiB" in message
    assert "data.batch_size=4 trainer.accumulate_grad_batches=4" in message


# ------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_ddp_on_two_cpu_processes_tests_each_image_once_and_logs_once(tmp_path: Path) -> None:
    data = [
        "data=synthetic",
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.images_per_class=15",  # 3 test images per class: 9 does not split evenly in 2
        *[o for o in SHRUNK if o.startswith("data.") and "images_per_class" not in o],
    ]
    run_dir = tmp_path / "ddp"
    run_module(
        "noodlenext.train",
        "experiment=quickstart", *data, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.max_epochs=1", "llm.max_new_tokens=8", "llm.num_explanations=1", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert sum(ddp["test/count_per_class"].values()) == 9  # no padded repeats

    eval_dir = tmp_path / "eval"  # one process over the same test images (noodlenext.eval's main, here)
    ckpt = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    status, output = run_main(noodlenext.eval.main, f"ckpt_path={ckpt}", *data, "trainer=cpu",
                              f"hydra.run.dir={eval_dir}")  # fmt: skip
    assert status == 0, output[-3000:]
    single = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("test/acc", "test/f1", "test/acc_per_class", "test/count_per_class", "confusion_matrix"):
        assert ddp[key] == single[key], key
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)

    # Rank 0 alone logs, renders the gallery and asks the LLM, once, over every test image.
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(run_file)
    history = [{i.key or "/".join(i.nested_key) for i in r.history.item} for r in records if r.history.item]
    for key in ("test/acc", "test/heatmaps", "test/llm_explanations"):
        assert sum(any(k.startswith(key) for k in h) for h in history) == 1, key
    assert "test/faithfulness/scorecam/deletion" in history_keys(records)
    gallery = json.loads((run_dir / "heatmaps" / "test" / "heatmaps.json").read_text())["samples"]
    assert len({r["file"] for r in gallery}) == len(gallery)
    explanations = (run_dir / "explanations.jsonl").read_text().splitlines()
    assert len(explanations) == min(1, round(9 * (1 - ddp["test/acc"])))


def test_epoch_loss_weighs_each_sample_once_across_uneven_batches() -> None:
    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=32, pretrained=False).eval()
    x, y = torch.randn(9, 3, 32, 32), torch.tensor([0, 1, 2] * 3)
    with torch.no_grad():
        model.test_step((x[:8], y[:8]), 0)
        model.test_step((x[8:], y[8:]), 1)  # a short last batch, as on one DDP shard
        expected = model.criterion(model(x), y)
    assert model.test_metrics["loss"].compute() == pytest.approx(expected.item(), rel=1e-5)


def test_atomic_writes_leave_files_readable_like_any_other(tmp_path: Path) -> None:
    from noodlenext.runs.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    write_json_atomic(tmp_path / "metrics.json", {"test/acc": 0.9})
    for name in ("last.ckpt", "metrics.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # temp files start as 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "metrics.json"]  # no leftovers
