"""GuardedCollector: the base of the test-end reports that never fail a run (LLM explanations, the
mistakes report). Collecting the test outputs and rendering are each guarded: a failure is logged, written
into the report as {"step", "message"} (`step_error`) and the run goes on to its metrics and checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from noodlenext.callbacks.samples import SampleCollector

log = logging.getLogger(__name__)


def step_error(step: str, err: BaseException) -> dict[str, str]:
    """An error record: the step that failed and what it raised."""
    return {"step": step, "message": f"{type(err).__name__}: {err}"}


class GuardedCollector(SampleCollector):
    """A SampleCollector whose test-time hooks never raise.

    Subclasses name themselves (`label`, for the log), say when they run (`enabled`), render as any
    SampleCollector does (`_render`, each step guarding itself), and write what a failure of every sample
    leaves (`_report_failure`: the step that failed before any sample was picked). `_failure` holds that
    step, None while all goes well.
    """

    label = "report"

    def __init__(self) -> None:
        super().__init__()
        self._failure: dict[str, str] | None = None

    @property
    def enabled(self) -> bool:
        return True

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        self._failure = None
        self._start_epoch()
        try:
            super().on_test_epoch_start(trainer, pl_module)
        except Exception as err:  # noqa: BLE001 - the run's results matter more than this report
            self._fail_all("collect", err)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self.enabled and self._failure is None:
            try:
                super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            except Exception as err:  # noqa: BLE001
                self._fail_all("collect", err)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        try:  # gathers on every rank (under DDP), then renders on rank 0
            super().on_test_epoch_end(trainer, pl_module)
        except Exception as err:  # noqa: BLE001 - a last resort: each step has its own guard
            log.exception("%s failed; the run goes on without it", self.label)
            self._render_failed(err)
        if self._failure is not None and trainer.is_global_zero:
            self._report_failure(trainer, self._failure)

    def _fail_all(self, step: str, err: BaseException) -> None:
        self._failure = step_error(step, err)
        log.error("%s: %s failed: %s", self.label, step, self._failure["message"])

    def _start_epoch(self) -> None:
        """Reset what one test epoch keeps (nothing by default)."""

    def _render_failed(self, err: BaseException) -> None:
        """What an error that escaped every step's guard leaves (by default: only the log)."""

    def _report_failure(self, trainer: Trainer, error: dict[str, Any]) -> None:
        raise NotImplementedError
