"""On a CUDA GPU: bf16 mixed precision and channels_last, through the real Trainer (not run by CI)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.core.devices import resolve_precision
from noodlenext.models.classifier import NoodleClassifier

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_uses_bf16_and_channels_last(tmp_path) -> None:
    assert resolve_precision("auto") == "bf16-mixed"
    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=64, pretrained=False)
    data = TensorDataset(torch.randn(32, 3, 64, 64), torch.randint(0, 3, (32,)))
    trainer = L.Trainer(
        max_steps=4,
        accelerator="gpu",
        devices=1,
        precision=resolve_precision("auto"),
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert model.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(next(model.parameters())).all()


# ------------------------------------------------------------------ data.decode=gpu, data.augment_on=gpu
def _jpeg(path, orientation: int = 1, size: tuple[int, int] = (640, 480)):  # noqa: ANN001, ANN202
    """A photo with a red top-left corner once upright, stored turned per its EXIF orientation."""
    import numpy as np
    from PIL import Image

    w, h = size
    arr = np.full((h, w, 3), 90, np.uint8)
    arr[: h // 4, : w // 4] = (250, 20, 20)
    image = Image.fromarray(arr)
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    exif = Image.Exif()
    if orientation in stored:
        image, exif[0x0112] = image.transpose(stored[orientation]), orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_batch_decodes_upright_like_the_cpu(tmp_path) -> None:
    from torchvision import transforms as T

    from noodlenext.data.gpu_decode import EncodedImages, collate_encoded, decode_batch
    from noodlenext.data.images import load_rgb

    samples = [(_jpeg(tmp_path / f"{o}.jpg", o), 0) for o in (1, 3, 6, 8)]
    resize = T.Resize((96, 128))
    items = EncodedImages(samples, resize)
    data, orientations, _ = collate_encoded([items[i] for i in range(len(items))])
    images = decode_batch(data, orientations, resize, "cuda")
    assert images.device.type == "cuda" and images.shape == (4, 3, 96, 128)
    for image, (path, _) in zip(images.cpu(), samples, strict=True):
        expected = T.PILToTensor()(resize(load_rgb(path))).float()
        assert float((image.float() - expected).abs().mean()) < 6.0, path.name
        assert image[0, 10, 10] > 200 and image[2, 10, 10] < 60, path.name  # red top left: upright


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_writeup_stack_on_cuda_draws_per_image() -> None:
    import time

    from noodlenext.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_augmentation, split_for_device

    _, device_stack = split_for_device(load_augmentation("writeup", 384, IMAGENET_MEAN, IMAGENET_STD).train)
    batch = torch.randint(0, 256, (1, 3, 420, 420), dtype=torch.uint8, device="cuda").expand(16, -1, -1, -1)
    device_stack(batch.contiguous())  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = device_stack(batch.contiguous())
    torch.cuda.synchronize()
    rate = 16 / (time.perf_counter() - start)
    assert out.shape == (16, 3, 384, 384) and out.dtype == torch.float32 and out.is_cuda
    assert len({tuple(x.flatten()[:64].tolist()) for x in out.cpu()}) == 16  # 16 different draws
    assert rate > 100, f"{rate:.0f} img/s"  # a floor only: bench/gpu.sh (loader) measures the rate


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_with_gpu_decoding_and_gpu_augmentation(tmp_path) -> None:
    from noodlenext.data.datamodule import NoodleDataModule

    root = tmp_path / "noodles"
    for c in ("a", "b"):
        for i in range(4):
            _jpeg(root / "train" / c / f"{i}.jpg", (1, 6, 3, 8)[i], size=(320 + 8 * i, 240))
    seen: dict[str, list] = {"train": [], "val": []}

    class Batches(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            seen["train"].append((batch[0].device.type, tuple(batch[0].shape), batch[0].dtype))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
            seen["val"].append((batch[0].device.type, tuple(batch[0].shape), batch[0].dtype))

    dm = NoodleDataModule(
        root, 64, batch_size=2, num_workers=2, val_fraction=0.25, decode="gpu", augment_on="gpu"
    )
    model = NoodleClassifier("convnext_atto", 2, ["a", "b"], image_size=64, pretrained=False)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="gpu",
        devices=1,
        precision=resolve_precision("auto"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[Batches()],
    )
    trainer.fit(model, datamodule=dm)
    assert seen["train"] == [("cuda", (2, 3, 64, 64), torch.float32)] * 2
    assert seen["val"] == [("cuda", (2, 3, 64, 64), torch.float32)]
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
