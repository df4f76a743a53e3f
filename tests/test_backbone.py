"""Pretrained weights: used when they can be had, a loud fallback or a fast clear failure when not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from noodlenext.models.backbone import create_backbone
from noodlenext.models.classifier import NoodleClassifier

ATTO = "convnext_atto.d2_in1k"


def saved_imagenet_like_weights(path: Path) -> dict[str, torch.Tensor]:
    """A random ConvNeXt-Atto with a 1000-class head, saved as a local weights file."""
    state = timm.create_model("convnext_atto", pretrained=False, num_classes=1000).state_dict()
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return state


def no_network(*args: object) -> None:
    raise AssertionError("a connection was attempted")


def test_pretrained_true_fails_at_once_offline_saying_what_to_do(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)  # nothing waits on a network
    with pytest.raises(RuntimeError, match=r"model.pretrained=true.*model.weights=.*model.pretrained=false"):
        create_backbone(ATTO, 3, pretrained="true")


def test_pretrained_auto_warns_and_trains_from_random_init_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="NO PRETRAINED WEIGHTS"):
        model, loaded = create_backbone(ATTO, 3, pretrained="auto")
    assert loaded is False and model.get_classifier().out_features == 3


def test_classifier_records_that_it_is_not_pretrained(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning):
        model = NoodleClassifier(ATTO, 3, ["a", "b", "c"], image_size=32, pretrained="auto")
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["noodlenext"]["pretrained"] is False


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_the_backbone_and_replace_the_head(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"atto{suffix}"
    state = saved_imagenet_like_weights(path)
    model, loaded = create_backbone(ATTO, 3, pretrained="false", weights=str(path))
    assert loaded is True
    mine = model.state_dict()
    assert torch.equal(mine["stem.0.weight"], state["stem.0.weight"])
    assert torch.equal(mine["stages.3.blocks.1.conv_dw.weight"], state["stages.3.blocks.1.conv_dw.weight"])
    assert mine["head.fc.weight"].shape == (3, 320)  # a fresh head for our classes


def test_missing_weights_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.weights=.*nope.safetensors"):
        create_backbone(ATTO, 3, weights=tmp_path / "nope.safetensors")


def test_unknown_model_name_names_the_option() -> None:
    with pytest.raises(ValueError, match="model.name='convnext_nope'"):
        create_backbone("convnext_nope", 3, pretrained="false")


@pytest.mark.slow
def test_weights_in_the_hugging_face_cache_are_used_offline(tmp_path: Path) -> None:
    """The real hub cache layout, read by huggingface_hub in a process whose cache is tmp_path (the cache
    folder is read when huggingface_hub is imported: a process of its own)."""
    snapshot = tmp_path / "models--timm--convnext_atto.d2_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    state = saved_imagenet_like_weights(snapshot / "model.safetensors")
    (tmp_path / "models--timm--convnext_atto.d2_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--convnext_atto.d2_in1k" / "refs" / "main").write_text("0123abcd")
    out = tmp_path / "stem.pt"
    code = (
        "import sys, torch; from noodlenext.models.backbone import create_backbone; "
        f"m, ok = create_backbone({ATTO!r}, 3, pretrained='true'); assert ok; "
        f"torch.save(m.state_dict()['stem.0.weight'], {str(out)!r})"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.load(out), state["stem.0.weight"])
