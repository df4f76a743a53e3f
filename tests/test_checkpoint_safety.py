"""Checkpoints load as plain data: a file whose unpickling runs code is refused by every command that
opens one (nothing of it runs), and trust_checkpoint=true is the explicit way to load more."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import write_image
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.callbacks.test_report import best_epoch
from noodlenext.models.checkpoints import UntrustedCheckpointError, load_checkpoint
from noodlenext.models.classifier import CHECKPOINT_KEY, NoodleClassifier, load_classifier
from noodlenext.runs.checkpoint_io import AtomicCheckpointIO
from noodlenext.runs.resume import RESUME_ENV, prepare_resume, release_run_lock

NAMES = ["spaghetti", "ramen", "udon"]


class TouchOnUnpickle:
    """Unpickling this calls pathlib.Path.touch: stands for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def tiny(**kwargs) -> NoodleClassifier:
    return NoodleClassifier("convnext_atto", 3, NAMES, image_size=32, pretrained=False, **kwargs)


def fit_and_save(model: NoodleClassifier, path: Path, steps: int = 1, ckpt_path: Path | None = None) -> None:
    """A real Lightning fit of a few steps and its checkpoint, as noodlenext.train writes them."""
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=path.parent, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by the current code (a one-step fit), in a run directory's checkpoints/."""
    path = tmp_path_factory.mktemp("trained") / "run" / "checkpoints" / "last.ckpt"
    model = tiny()
    model.run_config = {"model": {"name": "convnext_atto"}, "logger": {}}
    fit_and_save(model, path)
    return path


@pytest.fixture
def crafted(real_ckpt: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint, marker): the real checkpoint with a payload that creates `marker` when unpickled."""
    checkpoint = torch.load(real_ckpt, map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    checkpoint[CHECKPOINT_KEY]["note"] = TouchOnUnpickle(marker)
    path = tmp_path / "run" / "checkpoints" / "crafted.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    return path, marker


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write_image(tmp_path / "photos" / "2_udon" / "bowl.png", (32, 32))


@pytest.fixture(autouse=True)
def _isolated_resume(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(RESUME_ENV, "{}")  # prepare_resume hands its choice to DDP workers through it
    yield
    release_run_lock()


def assert_refused(error: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(error.value)
    assert "trust_checkpoint=true" in message and str(path) in message, message
    assert "pathlib" in message  # what the file needs, named
    assert not marker.exists()


def test_the_payload_does_run_code_when_unpickled_in_full(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()  # so every refusal below is a refusal of real code


# ------------------------------------------------------------------------------ refused everywhere
def test_load_classifier_refuses_it(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError) as error:
        load_classifier(path)
    assert_refused(error, path, marker)
    assert str(error.value).startswith(f"ckpt_path={path}")


@pytest.mark.parametrize("command", ["predict", "eval", "explain"])
def test_the_commands_refuse_it_through_their_config(
    command: str, crafted: tuple[Path, Path], photo: Path, compose_cfg: Callable[..., DictConfig]
) -> None:
    path, marker = crafted
    if command == "predict":
        from noodlenext.predict import predict as run
    elif command == "eval":
        from noodlenext.eval import evaluate as run
    else:
        from noodlenext.explain.__main__ import explain_images as run
    extra = {"predict": [f"input={photo}"], "eval": [f"data.root={photo.parent.parent}"],
             "explain": [f"input={photo}"]}[command]  # fmt: skip
    cfg = compose_cfg(command, [f"ckpt_path={path}", *extra])
    assert cfg.trust_checkpoint is False  # the default
    with pytest.raises(UntrustedCheckpointError) as error:
        run(cfg)
    assert_refused(error, path, marker)


def test_chat_and_app_refuse_it(crafted: tuple[Path, Path], photo: Path, compose_cfg) -> None:
    from noodlenext.app import serve
    from noodlenext.chat import chat

    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError) as error:
        chat(compose_cfg("chat", [f"ckpt_path={path}", f"image={photo}"]), questions=[])
    assert_refused(error, path, marker)
    with pytest.raises(UntrustedCheckpointError) as error:
        serve(compose_cfg("app", [f"ckpt_path={path}"]))
    assert_refused(error, path, marker)


def test_resume_refuses_it(crafted: tuple[Path, Path], tmp_path: Path, compose_cfg) -> None:
    path, marker = crafted
    # ckpt_path=... (the run's W&B id is read from the file before fitting)
    with pytest.raises(UntrustedCheckpointError) as error:
        prepare_resume(compose_cfg("train", ["experiment=quickstart", f"ckpt_path={path}"]))
    assert_refused(error, path, marker)
    # resume=auto finding it as a sibling run's last.ckpt: an error, not a silent skip
    sibling = tmp_path / "other" / "checkpoints" / "last.ckpt"
    sibling.parent.mkdir(parents=True)
    path.rename(sibling)
    with pytest.raises(UntrustedCheckpointError) as error:
        prepare_resume(compose_cfg("train", ["experiment=quickstart", "resume=auto"]))
    assert_refused(error, sibling, marker)


def test_lightning_fit_and_the_test_report_refuse_it(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError) as error:  # Trainer.fit(ckpt_path=...) in noodlenext.train
        fit_and_save(tiny(), path.parent / "resumed.ckpt", steps=2, ckpt_path=path)
    assert_refused(error, path, marker)
    assert best_epoch(path) is None and not marker.exists()


@pytest.mark.slow
def test_the_predict_command_refuses_it_and_says_how_to_opt_in(
    crafted: tuple[Path, Path], photo: Path
) -> None:
    path, marker = crafted
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "noodlenext.predict", f"ckpt_path={path}", f"input={photo}"],
        cwd=path.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "trust_checkpoint=true" in proc.stderr and str(path) in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()


# ------------------------------------------------------------------------------ what loads
def test_checkpoints_of_the_current_code_are_plain_data(real_ckpt: Path) -> None:
    checkpoint = torch.load(real_ckpt, map_location="cpu", weights_only=True)  # torch's own allow-list only
    assert checkpoint[CHECKPOINT_KEY]["class_names"] == NAMES
    assert isinstance(checkpoint[CHECKPOINT_KEY]["temperature"], float)  # calibration's T: a plain float


def test_a_model_built_from_an_unconverted_hydra_config_still_saves_plain_data(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"names": NAMES, "optim": {"head_lr": 1e-3, "betas": [0.9, 0.99]}, "kw": {}})
    model = NoodleClassifier("convnext_atto", 3, cfg.names, image_size=32, pretrained=False,
                             optim=cfg.optim, model_kwargs=cfg.kw, weights=None)  # fmt: skip
    model.run_config = OmegaConf.create({"model": {"name": "convnext_atto"}, "out": str(tmp_path)})
    path = tmp_path / "omega.ckpt"
    fit_and_save(model, path, steps=0)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["optim"] == {"head_lr": 1e-3, "betas": [0.9, 0.99]}
    assert checkpoint[CHECKPOINT_KEY]["config"]["model"] == {"name": "convnext_atto"}


def test_an_older_checkpoint_holding_omegaconf_containers_loads_through_the_allow_list(
    real_ckpt: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(real_ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"] = OmegaConf.create(checkpoint["hyper_parameters"])  # as unconverted
    checkpoint[CHECKPOINT_KEY]["config"] = OmegaConf.create({"model": {"name": "convnext_atto"}})
    path = tmp_path / "older.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="omegaconf"):
        torch.load(path, map_location="cpu", weights_only=True)  # more than torch's own allow-list
    model = load_classifier(path)
    assert model.class_names == NAMES and model.run_config == {"model": {"name": "convnext_atto"}}
    assert type(model.run_config) is dict and type(model.hparams.class_names) is list


def test_trust_checkpoint_loads_a_legit_file_that_needs_more(
    real_ckpt: Path, tmp_path: Path, photo: Path, compose_cfg
) -> None:
    from noodlenext.predict import predict

    checkpoint = torch.load(real_ckpt, map_location="cpu", weights_only=True)
    checkpoint[CHECKPOINT_KEY]["args"] = argparse.Namespace(lr=0.1)  # e.g. a training script's arguments
    path = tmp_path / "namespace.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace.*trust_checkpoint=true"):
        load_classifier(path)
    assert load_classifier(path, trust_checkpoint=True).class_names == NAMES
    assert load_checkpoint(path, trust=True)[CHECKPOINT_KEY]["args"].lr == 0.1
    out = tmp_path / "preds.csv"
    predict(
        compose_cfg(
            "predict", [f"ckpt_path={path}", f"input={photo}", f"output={out}", "trust_checkpoint=true"]
        )
    )
    assert out.read_text().count("\n") == 2  # header and the photo
    trusting = AtomicCheckpointIO(trust_checkpoint=True)
    assert trusting.load_checkpoint(path)["epoch"] == checkpoint["epoch"]  # what Trainer.fit/test read
    with pytest.raises(UntrustedCheckpointError):
        AtomicCheckpointIO().load_checkpoint(path)
