"""Our Score-CAM gives pytorch-grad-cam's maps and leaves the model as it found it; layer choice; Grad-CAM."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM as GradCamGradCAM
from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from noodlenext.explain import GradCAM, ScoreCAM, overlay, reshape_transform, target_layer

EARLY = "stages.1.blocks.1.conv_dw"  # 80 channels: 4x fewer forward passes than the last layer


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def convnext(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=3).eval()


def vit(img_size: int = 64, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=img_size, **kwargs
    ).eval()


def tiny_cnn() -> nn.Sequential:
    """Eight channels: enough for behaviour that does not depend on the architecture, and fast."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int], reshape=None):
    """pytorch-grad-cam's ScoreCAM maps (B, H, W), used the way its README says."""
    with GradCamScoreCAM(model, [layer], reshape_transform=reshape) as cam:
        return cam(x, [ClassifierOutputTarget(t) for t in targets])


def pearson(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b, strict=True)]


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ------------------------------------------------------------------------------ same maps as pytorch-grad-cam
@pytest.mark.slow
def test_scorecam_matches_pytorch_grad_cam_on_convnext() -> None:
    model, x, targets = convnext(), images(2), [0, 2]
    ours = ScoreCAM(model, target_layer(model))(x, targets)
    assert ours.shape == (2, 64, 64) and ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert min(pearson(ours.numpy(), reference(model, target_layer(model), x, targets))) >= 0.999


def test_scorecam_matches_pytorch_grad_cam_on_an_early_layer() -> None:
    model, x = convnext(), images(2, size=72)
    # 9x9 maps upsampled to 72 px miss their interior peaks (71 / 8 is no integer): min-max must
    # come after upsampling, as in pytorch-grad-cam. At 2x2 (the last layer at 64 px) order is moot.
    layer = target_layer(model, EARLY)
    ours = ScoreCAM(model, layer)(x, [1, 0]).numpy()
    ref = reference(model, layer, x, [1, 0])
    assert min(pearson(ours, ref)) >= 0.999
    assert np.abs(ours - ref).max() < 1e-3  # the other order is off by 0.01 here, yet has r > 0.9999


@pytest.mark.slow
def test_scorecam_matches_pytorch_grad_cam_on_vit() -> None:
    model, x, targets = vit(), images(2), [1, 2]
    layer, reshape = target_layer(model), reshape_transform(model)
    ours = ScoreCAM(model, layer, reshape)(x, targets).numpy()
    assert min(pearson(ours, reference(model, layer, x, targets, reshape))) >= 0.999


@pytest.mark.slow
def test_vit_maps_follow_the_image_size() -> None:
    model = vit(dynamic_img_size=True)  # built for 64 px (4x4 patches), run at 96 px (6x6)
    layer, reshape = target_layer(model), reshape_transform(model)
    assert reshape(torch.zeros(2, 1 + 16, 192)).shape == (2, 192, 4, 4)
    assert reshape(torch.zeros(2, 1 + 36, 192)).shape == (2, 192, 6, 6)
    x = images(1, size=96)
    ours = ScoreCAM(model, layer, reshape)(x, [0]).numpy()
    assert ours.shape == (1, 96, 96)
    assert min(pearson(ours, reference(model, layer, x, [0], reshape))) >= 0.999


def test_vit_grid_comes_from_the_model_not_14x14() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 64), reg_tokens=2)
    tokens = torch.zeros(1, model.num_prefix_tokens + 2 * 4, 192)  # class + 2 register tokens, 2x4 grid
    assert reshape_transform(model)(tokens).shape == (1, 192, 2, 4)


def test_a_batch_equals_one_image_at_a_time() -> None:
    model, x, targets = convnext(), images(3), [2, 0, 1]
    cam = ScoreCAM(model, target_layer(model, EARLY), batch_size=48)  # chunks that span two images
    batch = cam(x, targets)
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], cam(x[i : i + 1], targets[i : i + 1]), atol=1e-5, rtol=0)


def test_targets_default_to_the_predicted_class() -> None:
    model, x = convnext(), images(2)
    cam = ScoreCAM(model, target_layer(model, EARLY))
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).tolist()
    torch.testing.assert_close(cam(x), cam(x, predicted))


def test_a_target_per_image_is_required() -> None:
    model = tiny_cnn()
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        ScoreCAM(model, model[2])(images(3, 32), [0, 1])


def test_a_target_must_be_a_class_of_the_model() -> None:
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"not all classes 0\.\.2"):
        ScoreCAM(model, model[2])(images(2, 32), [0, 3])
    with pytest.raises(ValueError, match="top_k=0"):
        ScoreCAM(model, model[2], top_k=0)


def test_a_token_layer_without_reshape_transform_says_so() -> None:
    model = vit()
    with pytest.raises(ValueError, match="reshape_transform"):
        ScoreCAM(model, target_layer(model), reshape_transform=None)(images(1), [0])


def test_the_vit_reshape_is_derived_by_default() -> None:
    model = vit()
    assert ScoreCAM(model).reshape_transform is not None and GradCAM(model).reshape_transform is not None
    assert ScoreCAM(model)(images(1), [0]).shape == (1, 64, 64)


# ------------------------------------------------------------------------------ leaves the model as it was
def test_model_mode_is_restored() -> None:
    model = tiny_cnn().train()
    model[3].eval()  # mixed flags, e.g. frozen BatchNorm
    before = flags(model)
    ScoreCAM(model, model[2])(images(2, 32), [0, 1])
    assert flags(model) == before
    model.eval()
    ScoreCAM(model, model[2])(images(2, 32), [0, 1])
    assert not any(flags(model))


def test_the_model_runs_in_eval_mode_inside() -> None:
    model = tiny_cnn()  # dropout and batch statistics would make train-mode maps random
    x = images(2, 32)
    torch.testing.assert_close(
        ScoreCAM(model.train(), model[2])(x, [0, 1]), ScoreCAM(model.eval(), model[2])(x, [0, 1])
    )


def test_no_hooks_remain_after_calls() -> None:
    model = convnext()
    ScoreCAM(model, target_layer(model, EARLY))(images(1), [0])
    with ScoreCAM(model, target_layer(model, EARLY)) as cam:
        cam(images(1), [1])
        assert hooks(model) == 0
    assert hooks(model) == 0


def test_no_hooks_remain_and_mode_is_restored_after_an_exception() -> None:
    model = tiny_cnn().train()
    with pytest.raises(RuntimeError):
        ScoreCAM(model, model[2])(torch.zeros(1, 4, 32, 32))  # four channels: the first conv fails
    assert hooks(model) == 0
    assert all(flags(model))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects() meets deprecated torch objects
@pytest.mark.slow
def test_memory_does_not_grow_over_200_calls() -> None:
    model = tiny_cnn()
    cam, x = ScoreCAM(model, model[2]), images(2, 32)
    for _ in range(10):  # allocator and caches warm up
        cam(x)
    gc.collect()
    tensors = sum(isinstance(o, torch.Tensor) for o in gc.get_objects())
    rss = rss_bytes()
    for _ in range(200):
        cam(x)
    gc.collect()
    assert sum(isinstance(o, torch.Tensor) for o in gc.get_objects()) == tensors
    assert rss_bytes() - rss < 16 * 2**20  # 200 leaked activation sets would be far larger
    assert hooks(model) == 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ options
@pytest.mark.slow
def test_top_k_gives_a_valid_map_close_to_exact() -> None:
    model, x, targets = convnext(), images(3), [0, 1, 2]
    exact = ScoreCAM(model, target_layer(model))(x, targets).numpy()
    approx = ScoreCAM(model, target_layer(model), top_k=160)(x, targets).numpy()  # half of 320 channels
    assert approx.shape == exact.shape and approx.min() >= 0 and approx.max() <= 1
    # Random weights score all channels alike, so this checks sampling, not quality (r 0.86-1.0 here). On
    # the quickstart checkpoint top-64 of 320 gives mean r 0.71 on 8 photos, 5x faster (bench/cam_speed.py).
    assert np.mean(pearson(exact, approx)) > 0.5


def test_bf16_autocast_can_be_forced_on_cpu() -> None:
    model = tiny_cnn()
    x = images(2, 32)
    fp32 = ScoreCAM(model, model[2], autocast=False)(x, [0, 1]).numpy()
    bf16 = ScoreCAM(model, model[2], autocast=True)(x, [0, 1]).numpy()
    assert min(pearson(fp32, bf16)) > 0.9


# ------------------------------------------------------------------------------ target layers
def test_convnext_target_is_the_last_depthwise_conv() -> None:
    model = convnext()
    assert target_layer(model) is model.stages[-1].blocks[-1].conv_dw
    assert reshape_transform(model) is None


@pytest.mark.parametrize(("side", "stage", "cells"), [(64, 2, 4), (96, 2, 6), (128, 3, 4), (384, 3, 12)])
def test_convnext_default_layer_gives_at_least_a_4x4_map_at_the_models_input_size(
    side: int, stage: int, cells: int
) -> None:
    """At 64 px the last stage is 2x2, too coarse for a 3x3 grid of regions: the default moves to the
    deepest stage with a map of 4x4 or more, and stays on the write-up's last stage from 128 px up."""
    from noodlenext.explain.layers import target_layer_path
    from noodlenext.models.classifier import NoodleClassifier

    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=side, pretrained=False).eval()
    layer = target_layer(model)
    assert layer is model.net.stages[stage].blocks[-1].conv_dw
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.shape[-2:]))
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    handle.remove()
    assert tuple(seen[0]) == (cells, cells)
    # A bare copy of the network finds the same layer by its path (the randomisation check needs it).
    assert (
        target_layer_path(model) == f"stages.{stage}.blocks.{len(model.net.stages[stage].blocks) - 1}.conv_dw"
    )
    maps = GradCAM(model)(torch.randn(2, 3, side, side), [0, 1])
    assert maps.shape == (2, side, side)


def test_vit_target_is_the_last_blocks_first_norm() -> None:
    model = vit()
    assert target_layer(model) is model.blocks[-1].norm1


def test_a_wrapper_with_net_resolves_to_the_timm_model() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = convnext()

    wrapper = Wrapper()
    assert target_layer(wrapper) is wrapper.net.stages[-1].blocks[-1].conv_dw
    assert target_layer(wrapper, "stages.0.blocks.0.conv_dw") is wrapper.net.stages[0].blocks[0].conv_dw


def test_a_dotted_path_selects_the_layer() -> None:
    model = convnext()
    assert target_layer(model, "stages.3.blocks.1.conv_dw") is model.stages[3].blocks[1].conv_dw
    assert target_layer(model, "stages.-1.blocks.-1.norm") is model.stages[-1].blocks[-1].norm


@pytest.mark.parametrize("path", ["stages.9.blocks.0", "stages.3.nope", "head.fc.weight"])
def test_a_bad_path_names_the_setting_and_candidates(path: str) -> None:
    with pytest.raises(ValueError, match=r"explain\.target_layer.*head\.fc"):
        target_layer(convnext(), path)


def test_an_unknown_architecture_asks_for_a_path() -> None:
    with pytest.raises(ValueError, match=r"explain\.target_layer"):
        target_layer(tiny_cnn())
    assert target_layer(tiny_cnn(), "2").out_channels == 8


# ------------------------------------------------------------------------------ Grad-CAM and overlays
def test_gradcam_returns_maps_and_restores_the_model() -> None:
    model = convnext().train()
    before = flags(model)
    maps = GradCAM(model, target_layer(model))(images(2), [0, 1])
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert flags(model) == before and hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())  # its backward pass leaves no gradients behind


def gradcam_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets, reshape=None):
    """pytorch-grad-cam's GradCAM maps (B, H, W), used the way its README says."""
    with GradCamGradCAM(model, [layer], reshape_transform=reshape) as cam:
        wanted = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        return cam(x, wanted)


@pytest.mark.parametrize("arch", ["convnext", "vit"])
def test_gradcam_matches_pytorch_grad_cam_with_a_backward_pass_that_stops_at_the_layer(arch: str) -> None:
    model = convnext() if arch == "convnext" else vit()
    layer, reshape = target_layer(model), reshape_transform(model)
    x = images(2)
    for targets in ([0, 2], None):  # given classes, and the predicted ones
        ours = GradCAM(model, layer, reshape)(x, targets).numpy()
        theirs = gradcam_reference(model, layer, x, targets, reshape)
        assert min(pearson(ours, theirs)) > 0.9999
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_gradcam_leaves_which_parameters_train_as_it_found_them() -> None:
    model = convnext()
    model.stem.requires_grad_(False)  # a frozen stem, as a fine-tuning run may leave it
    before = [p.requires_grad for p in model.parameters()]
    GradCAM(model, target_layer(model))(images(1), [1])
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_on_vit_with_default_targets() -> None:
    model = vit()
    maps = GradCAM(model, target_layer(model), reshape_transform(model))(images(1))
    assert maps.shape == (1, 64, 64) and hooks(model) == 0


def test_overlay_blends_the_heatmap_onto_the_image() -> None:
    photo = Image.new("RGB", (80, 60), (0, 0, 0))
    cam = np.zeros((30, 40), np.float32)
    cam[:, 20:] = 1.0  # right half hot
    out = overlay(photo, cam, alpha=0.5)
    assert out.size == (80, 60) and out.mode == "RGB"
    left, right = np.asarray(out)[30, 5], np.asarray(out)[30, 75]
    assert left[2] > left[0] and right[0] > right[2]  # jet: cold is blue, hot is red
    assert np.array_equal(np.asarray(overlay(photo, cam, alpha=0.0)), np.asarray(photo))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_on_cuda_stays_close_to_fp32_grad_cam() -> None:
    model = convnext().cuda()
    x, targets = images(2).cuda(), [0, 2]
    ours = ScoreCAM(model, target_layer(model))(x, targets).numpy()  # bf16 + channels_last by default
    assert min(pearson(ours, reference(model, target_layer(model), x, targets))) >= 0.99
