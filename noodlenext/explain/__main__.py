"""python -m noodlenext.explain ckpt_path=... input=<image or folder>: heatmap overlays and facts."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.devices import resolve_device
from noodlenext.core.files import write_json_atomic
from noodlenext.core.ownership import claim_folder
from noodlenext.data.images import find_readable_images
from noodlenext.explain.folder import explain_files
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import load_classifier

log = logging.getLogger(__name__)


def explain_images(cfg: DictConfig) -> Path:
    """Overlays `<relative path>_<method>.png` (the input's folders mirrored, extension kept) and
    `facts.json` for every readable image of cfg.input.

    Each image's prediction and GradCAM overlay come first, then ScoreCAM with a progress bar and the
    time left. Ctrl+C stops it: facts.json still records every overlay written (an image whose ScoreCAM
    was cut off says `unfinished: ["scorecam"]`), and the command exits with 130.
    """
    model = load_classifier(cfg.ckpt_path, trust_checkpoint=cfg.get("trust_checkpoint", False))
    model = model.use(calibration=cfg.get("calibration")).to(resolve_device(cfg.device))
    paths = find_readable_images(cfg.input)
    # A folder the user named is filled only when it is new, empty, or an earlier explain's (its marker).
    out = Path(cfg.paths.output_dir) / "explanations"
    if cfg.get("output"):
        out = claim_folder(cfg.output, "output")
    records: list[dict] = []
    try:
        explain_files(
            model,
            paths,
            out,
            cfg.method,
            HeatmapSettings.of(cfg.explain),
            cfg.get("target"),
            cfg.batch_size,
            Path(cfg.input).expanduser(),
            records=records,
        )
    except KeyboardInterrupt:
        write_json_atomic(out / "facts.json", records)
        finished = sum("unfinished" not in r for r in records)
        log.warning(
            "stopped: %d of %d image(s) explained in full, %d cut off before ScoreCAM; what was written and "
            "facts.json are in %s",
            finished,
            len(paths),
            len(records) - finished,
            out,
        )
        raise SystemExit(130) from None
    write_json_atomic(out / "facts.json", records)
    log.info("explained %d image(s) into %s", len(records), out)
    print(out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    explain_images(cfg)


if __name__ == "__main__":
    main()
