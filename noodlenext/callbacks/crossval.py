"""CrossvalLabelIssues: the Hydra callback of experiment=crossval; when the folds are trained, it runs
confident learning over their out-of-fold predictions (data/confident_learning.py) in the sweep dir."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class CrossvalLabelIssues(Callback):
    """Hydra callback (hydra.callbacks): label_issues.csv/.txt and clean_files.txt when a multirun ends.
    A failure is logged, never raised: the folds are trained, and the command can be rerun by hand."""

    def __init__(self, filter_by: str = "prune_by_noise_rate") -> None:
        self.filter_by = filter_by

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from noodlenext.data.confident_learning import write_label_issues

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            result = write_label_issues(sweep_dir, filter_by=self.filter_by)
        except Exception:
            log.exception(
                "could not find label issues in %s; rerun `python -m noodlenext.data.label_issues %s`",
                sweep_dir,
                sweep_dir,
            )
            return
        log.info(
            "%d likely label issue(s) of %d train/ images: %s (quarantine them with `python -m "
            "noodlenext.data.check root=%s fix=quarantine fix_kinds=[] files=%s`, or train on "
            "data.file_list=%s)",
            len(result.issues),
            result.checked,
            result.csv,
            result.root,
            result.issues_list,
            result.clean_list,
        )
