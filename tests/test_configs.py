"""Every config group and experiment composes, and what it describes can be built."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from noodlenext.core.config import config_dir
from noodlenext.core.devices import resolve_precision
from noodlenext.runs.instantiate import instantiate_callbacks, instantiate_loggers

GROUPS = (
    "data",
    "augment",
    "explain",
    "model",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
    "paths",
    "hydra",
    "llm",
    "prompt",
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_config_groups_exist() -> None:
    assert set(options("model")) >= {
        "convnext_atto",
        "convnext_tiny",
        "convnext_base",
        "vit_tiny",
        "vit_base",
    }
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp"}
    assert set(options("logger")) >= {"wandb", "csv", "tensorboard", "none"}
    assert set(options("data")) >= {"noodles", "synthetic"}
    assert set(options("experiment")) >= {"writeup", "quickstart"}
    assert set(options("llm")) >= {"none", "smollm2", "gemma3_4b", "gguf", "transformers", "openai"}
    for group in GROUPS:
        assert options(group), group


def test_default_model_is_convnext_base_at_384(compose_cfg) -> None:
    cfg = compose_cfg("train")
    assert cfg.model.name.startswith("convnext_base") and cfg.model.image_size == 384
    assert cfg.data.image_size == 384  # data follows the model's input size


# The base models draw ~90M random weights each: seconds of CPU.
BIG_MODELS = {"convnext_base", "vit_base"}


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=[pytest.mark.slow] if m in BIG_MODELS else []) for m in options("model")]
)
def test_every_model_instantiates(compose_cfg, model: str) -> None:
    size = 64
    cfg = compose_cfg("train", [f"model={model}", "model.pretrained=false", f"model.image_size={size}"])
    net = hydra.utils.instantiate(cfg.model, num_classes=3, class_names=["a", "b", "c"], _convert_="all")
    with torch.no_grad():
        assert net(torch.zeros(1, 3, size, size)).shape == (1, 3)


@pytest.mark.parametrize("data", options("data"))
def test_every_data_config_instantiates(compose_cfg, data: str, make_tree) -> None:
    root = make_tree({"train": 3})
    cfg = compose_cfg("train", [f"data={data}", f"data.root={root}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.class_names == ["spaghetti", "ramen", "udon"] and dm.image_size == 384


@pytest.mark.parametrize(
    "trainer", [t for t in options("trainer") if t != "gpu" or torch.cuda.is_available()]
)
def test_every_trainer_instantiates(compose_cfg, trainer: str) -> None:
    overrides = [f"trainer={trainer}"] + (["trainer.accelerator=cpu"] if trainer == "ddp" else [])
    cfg = compose_cfg("train", overrides)
    built = hydra.utils.instantiate(
        cfg.trainer, precision=resolve_precision(cfg.trainer.precision), logger=False
    )
    assert built.max_epochs == 15 and built.gradient_clip_val == 1.0


def test_gpu_trainer_asks_for_bf16(compose_cfg) -> None:
    cfg = compose_cfg("train", ["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_instantiates(compose_cfg, logger: str) -> None:
    cfg = compose_cfg("train", [f"logger={logger}"])
    built = instantiate_loggers(cfg)
    assert len(built) == (0 if logger == "none" else 1)


def test_wandb_logger_is_offline_without_an_account(compose_cfg, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert compose_cfg("train").logger.wandb.offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert compose_cfg("train").logger.wandb.offline is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert compose_cfg("train").logger.wandb.offline is True


def test_callbacks_instantiate(compose_cfg) -> None:
    names = {type(c).__name__ for c in instantiate_callbacks(compose_cfg("train"))}
    assert {
        "ModelCheckpoint",
        "HeatmapGallery",
        "EarlyStopping",
        "TestReport",
        "RichProgressBar",
        "LearningRateMonitor",
    } <= names
    assert "LearningRateMonitor" not in {
        type(c).__name__ for c in instantiate_callbacks(compose_cfg("train"), with_logger=False)
    }


def test_writeup_experiment_is_the_recipe(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=writeup"])
    assert cfg.model.name == "convnext_base.fb_in22k_ft_in1k_384"
    assert cfg.model.image_size == cfg.data.image_size == 384
    assert cfg.data.batch_size == 16 and cfg.hydra.runtime.choices.augment == "writeup"
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406] and list(cfg.data.std) == [0.229, 0.224, 0.225]
    assert cfg.trainer.max_epochs == 15 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.model.label_smoothing == 0.2
    assert OmegaConf.to_container(cfg.model.optim) == {
        "head_lr": 1e-4,
        "backbone_lr": 1e-5,
        "weight_decay": 0.03,
        "layer_decay": None,
        "warmup_frac": 0.15,
        "betas": [0.9, 0.999],
    }
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.callbacks.early_stopping.monitor == "val/acc"


def test_quickstart_uses_synthetic_data_and_a_tiny_model(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=quickstart"])
    assert cfg.data.synthetic is not None and cfg.model.name.startswith("convnext_atto")
    assert cfg.model.image_size == 64


def test_the_synthetic_dishes_option_reaches_the_render(compose_cfg, tmp_path: Path) -> None:
    overrides = [
        f"paths.data_dir={tmp_path}",
        "data.synthetic.images_per_class=3",
        "data.synthetic.image_size=32",
    ]
    cfg = compose_cfg("train", ["data=synthetic", *overrides, "data.synthetic.dishes=any"])
    hydra.utils.instantiate(cfg.data).prepare_data()
    assert json.loads((tmp_path / "synthetic_noodles" / "SYNTHETIC.json").read_text())["dishes"] == "any"


def test_debug_config_runs_one_batch_without_logger(compose_cfg) -> None:
    cfg = compose_cfg("train", ["debug=default"])
    assert cfg.trainer.fast_dev_run is True and not instantiate_loggers(cfg)


@pytest.mark.parametrize("task", ["eval", "predict", "explain", "chat"])
def test_eval_predict_and_explain_configs_compose(compose_cfg, task: str) -> None:
    extra = {"eval": [], "chat": ["image=y.jpg"]}.get(task, ["input=y"])
    cfg = compose_cfg(task, ["ckpt_path=x.ckpt", *extra])
    assert cfg.ckpt_path == "x.ckpt" and "model" not in cfg  # the model comes from the checkpoint


@pytest.mark.slow
def test_run_dirs_carry_a_per_process_id(compose_cfg, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "from noodlenext.core.config import RUN_ID; print(RUN_ID)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    ids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(ids) == 3
    cfg = compose_cfg("train")
    assert "${run_id:}" in OmegaConf.to_yaml(cfg.hydra.run, resolve=False)


@pytest.mark.parametrize("llm", options("llm"))
def test_every_llm_config_names_a_backend_class_and_its_generation_settings(compose_cfg, llm: str) -> None:
    cfg = compose_cfg(
        "train",
        [f"llm={llm}", "llm.model=some/model"]
        if llm in ("gguf", "transformers", "openai")
        else [f"llm={llm}"],
    )
    assert cfg.llm.name == llm
    if llm == "none":
        assert cfg.llm.backend is None
        return
    backend = hydra.utils.get_class(cfg.llm.backend._target_)
    assert backend.__module__.startswith("noodlenext.llm.")
    assert OmegaConf.to_container(cfg.llm, resolve=True)["backend"]["model"] == cfg.llm.model
    assert cfg.llm.max_new_tokens > 0 and cfg.llm.num_explanations > 0


def test_llm_explanations_callback_follows_the_llm_choice(compose_cfg) -> None:
    from noodlenext.callbacks.llm_explanations import LLMExplanations

    for llm, enabled in (("none", False), ("smollm2", True)):
        callbacks = instantiate_callbacks(compose_cfg("train", [f"llm={llm}"]))
        (callback,) = [c for c in callbacks if isinstance(c, LLMExplanations)]
        assert callback.enabled is enabled  # built lazily: no model is loaded here


def test_quickstart_explains_offline_and_writeup_with_gemma(compose_cfg) -> None:
    assert compose_cfg("train", ["experiment=quickstart"]).llm.name == "smollm2"
    writeup = compose_cfg("train", ["experiment=writeup"]).llm
    assert writeup.name == "gemma3_4b" and writeup.model == "google/gemma-3-4b-it"


def test_switching_a_callback_off_is_an_ordinary_override(compose_cfg) -> None:
    names = {
        type(c).__name__
        for c in instantiate_callbacks(compose_cfg("train", ["callbacks.heatmap_gallery=null"]))
    }
    assert "HeatmapGallery" not in names and "TestReport" in names
    assert "EarlyStopping" not in {
        type(c).__name__ for c in instantiate_callbacks(compose_cfg("train", ["~callbacks.early_stopping"]))
    }


def test_every_callback_has_its_own_file() -> None:
    default = OmegaConf.load(config_dir() / "callbacks" / "default.yaml")
    for name in (n for n in default.defaults if n != "_self_"):
        assert list(OmegaConf.load(config_dir() / "callbacks" / f"{name}.yaml")) == [name]


@pytest.mark.parametrize("task", ["train", "explain", "chat", "app"])
def test_every_command_shares_the_explain_group(compose_cfg, task: str) -> None:
    extra = {"train": [], "explain": ["ckpt_path=x", "input=y"], "chat": ["ckpt_path=x", "image=y"]}
    cfg = compose_cfg(task, [*extra.get(task, ["ckpt_path=x"]), "explain.top_k=64"])
    settings = hydra.utils.instantiate(cfg.explain)
    assert type(settings).__name__ == "HeatmapSettings" and settings.top_k == 64
    assert cfg.hydra.runtime.choices.explain == "default"


def test_heatmap_callbacks_take_the_explain_settings(compose_cfg) -> None:
    cfg = compose_cfg("train", ["llm=smollm2", "explain.top_k=32", "explain.target_layer=stages.2"])
    callbacks = {type(c).__name__: c for c in instantiate_callbacks(cfg)}
    for name in ("HeatmapGallery", "LLMExplanations"):
        assert callbacks[name].settings.top_k == 32 and callbacks[name].settings.target_layer == "stages.2"


def test_vit_configs_stand_on_their_own() -> None:
    vit = OmegaConf.load(config_dir() / "model" / "vit_base.yaml")
    assert "defaults" not in vit and vit.optim.layer_decay == 0.75
    assert list(OmegaConf.load(config_dir() / "model" / "vit_tiny.yaml").defaults) == ["vit_base", "_self_"]


@pytest.mark.parametrize(
    ("model", "size", "mean"), [("convnext_base", 384, 0.485), ("vit_base", 384, 0.5), ("vit_tiny", 224, 0.5)]
)
def test_input_size_and_normalisation_come_from_timms_pretrained_config(
    compose_cfg, model: str, size: int, mean: float
) -> None:
    cfg = compose_cfg("train", [f"model={model}"])
    assert cfg.model.image_size == cfg.data.image_size == size
    assert cfg.model.mean[0] == cfg.data.mean[0] == mean
    assert compose_cfg("train", [f"model={model}", "model.image_size=96"]).data.image_size == 96


def test_an_unknown_timm_name_says_which_settings_to_give(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model.name=not_a_timm_model"])
    with pytest.raises(Exception, match=r"set model.image_size, model.mean and model.std"):
        _ = cfg.data.image_size


def test_llm_configs_share_one_generation_base(compose_cfg) -> None:
    for llm in options("llm"):
        defaults = list(OmegaConf.load(config_dir() / "llm" / f"{llm}.yaml").get("defaults", []))
        assert defaults and defaults[0] in ("base/generation@_here_", "gguf", "transformers"), llm
    assert compose_cfg("train", ["llm=openai", "llm.model=m"]).llm.num_explanations == 4
