"""LLMExplanations never fails a run: a step that breaks is written into the records, the metrics stay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from test_train_e2e import SHRUNK
from wandb_records import history_keys, read_records

from noodlenext.callbacks.samples import single_loader
from noodlenext.train import train


class DamageTheWorstMistake(Callback):
    """After the last test batch (the test loop has read every photo), overwrites the photo of the
    misclassified test sample with the largest loss with bytes that are no image, as a disk or a
    careless script might between testing and explaining. Writes the damaged path to `report`."""

    def __init__(self, report: str) -> None:
        self.report = Path(report)
        self.worst: tuple[float, int] | None = None

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        loader = single_loader(trainer.test_dataloaders)
        order = list(iter(loader.sampler))
        losses = F.cross_entropy(outputs["logits"].float(), batch[1], reduction="none")
        for i, (loss, pred, target) in enumerate(
            zip(losses, outputs["logits"].argmax(1), batch[1], strict=True)
        ):
            if pred != target and (self.worst is None or loss.item() > self.worst[0]):
                self.worst = (loss.item(), order[batch_idx * loader.batch_size + i])
        if batch_idx == len(loader) - 1 and self.worst is not None:
            path = Path(loader.dataset.samples[self.worst[1]][0])
            path.write_bytes(b"not an image any more")
            self.report.write_text(str(path))


@pytest.mark.slow
def test_a_photo_damaged_after_testing_is_named_in_its_record_and_the_run_finishes(
    tmp_path: Path, compose_cfg
) -> None:
    report = tmp_path / "damaged.txt"
    cfg = compose_cfg(
        "train",
        [
            "experiment=quickstart", f"data.root={tmp_path / 'synthetic'}", *SHRUNK, "trainer.max_epochs=1",
            "llm.max_new_tokens=8", "llm.num_explanations=2",
            # The callbacks this needs, no more: the checkpoints, the metrics, the explanations (no
            # HeatmapGallery, so LLMExplanations computes the evidence itself).
            "callbacks=[model_checkpoint,last_checkpoint,test_report,llm_explanations]",
            "+callbacks.damage._target_=test_llm_explanations.DamageTheWorstMistake",
            f"+callbacks.damage.report={report}",
        ],
    )  # fmt: skip
    train(cfg)

    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc" in metrics and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert report.is_file(), "the run made no test mistake to damage"
    damaged = report.read_text()
    records = [json.loads(line) for line in (run_dir / "explanations.jsonl").read_text().splitlines()]
    assert records[0]["file"] == damaged  # the worst mistake comes first
    bad, *good = records
    assert good, "only one mistake: nothing to compare the damaged record with"
    assert bad["error"]["step"] == "load_image" and Path(damaged).name in bad["error"]["message"]
    assert bad["explanation"] is None and bad["evidence"] is None and bad["images"] == []
    assert bad["predicted"] != bad["true_label"] and bad["loss"] > 0  # what is known without the photo
    # The others are explained as usual: evidence, images and a gated explanation, no error.
    for r in good:
        assert r["error"] is None and r["explanation"] and r["source"] in ("llm", "llm_retry", "template")
        assert r["evidence_lines"] and all(Path(p).is_file() for p in r["images"])
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert any(k.startswith("test/llm_explanations") for k in history_keys(read_records(run_file)))
