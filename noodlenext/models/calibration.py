"""Are the classifier's probabilities honest? Calibration errors, reliability-diagram bins, and
temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Temperature scaling divides every logit by one number T fitted on the validation set (the NLL of the
val logits, minimised with LBFGS); T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one (label smoothing tends to make one). The predicted class never changes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

CALIBRATIONS = ("temperature", "none")
# Equal-width confidence bins, as in Guo et al. (and torchmetrics' default).
N_BINS = 15
# T is searched in this range: a val set the model gets all right drives the NLL-optimal T towards 0.
TEMPERATURE_BOUNDS = (0.05, 100.0)


def check_calibration(calibration: str) -> str:
    """`temperature` or `none`, or a clear error naming the option."""
    value = str(calibration).lower()
    if value not in CALIBRATIONS:
        raise ValueError(
            f"calibration={calibration!r}: use temperature (the checkpoint's fitted temperature, "
            "softmax(logits / T)) or none (the raw softmax)"
        )
    return value


def _plain(t: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """A CPU copy usable by autograd (tensors made under inference mode are not)."""
    with torch.inference_mode(False):
        return t.detach().to("cpu", dtype).clone()


def nll(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    if len(targets) == 0:
        return float("nan")
    logits, targets = _plain(logits), _plain(targets, torch.long)
    return float(F.cross_entropy(logits / temperature, targets))


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """The T that minimises the NLL of softmax(logits / T) on (logits, targets), within
    TEMPERATURE_BOUNDS; 1.0 without samples. logits: (N, C); targets: (N,) class indices.

    Optimises log T with LBFGS (strong Wolfe line search) in float64 on the CPU; never returns a T
    whose NLL is worse than T = 1's.
    """
    if len(targets) == 0:
        return 1.0
    logits, targets = _plain(logits), _plain(targets, torch.long)
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    with torch.inference_mode(False), torch.enable_grad():
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.clamp(lo, hi).exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    fitted = float(log_t.detach().clamp(lo, hi).exp())
    if not math.isfinite(fitted) or nll(logits, targets, fitted) > nll(logits, targets, 1.0):
        return 1.0
    return fitted


def calibration_errors(probs: Tensor, targets: Tensor, n_bins: int = N_BINS) -> dict[str, float]:
    """Expected (`ece`, the l1 norm) and maximum (`mce`) calibration error of the top-1 confidence,
    with torchmetrics' MulticlassCalibrationError (its functional form: nothing to sync, the inputs are
    already gathered) over n_bins equal-width bins. probs: (N, C) rows summing to 1; targets: (N,)."""
    if len(targets) == 0:
        return {"ece": float("nan"), "mce": float("nan")}
    probs, targets = probs.detach().float().cpu(), targets.detach().long().cpu()
    num_classes = probs.shape[1]
    return {
        key: float(multiclass_calibration_error(probs, targets, num_classes, n_bins, norm))
        for key, norm in (("ece", "l1"), ("mce", "max"))
    }


def reliability_bins(probs: Tensor, targets: Tensor, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """The data of a reliability diagram: per equal-width confidence bin, its edges, how many samples
    fall in it, their mean top-1 confidence and their accuracy (0 for an empty bin). A confidence of
    exactly 1 falls in the last bin."""
    probs, targets = probs.detach().float().cpu(), targets.detach().long().cpu()
    confidence, predicted = probs.max(dim=1) if len(targets) else (torch.zeros(0), torch.zeros(0))
    correct = (predicted == targets).float() if len(targets) else torch.zeros(0)
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    correct_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    safe = count.clamp(min=1)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": [int(c) for c in count.tolist()],
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (correct_sum / safe).tolist(),
    }


def calibration_report(
    logits: Tensor, calibrated_logits: Tensor, targets: Tensor, temperature: float, n_bins: int = N_BINS
) -> dict[str, Any]:
    """ECE, MCE and NLL before and after temperature scaling, the temperature, and both reliability
    diagrams' bins. logits / calibrated_logits: (N, C) whose softmax is the raw / the calibrated
    probabilities (with test-time augmentation: the log of the views' mean probabilities)."""
    raw, calibrated = logits.float().softmax(dim=1), calibrated_logits.float().softmax(dim=1)
    before, after = calibration_errors(raw, targets, n_bins), calibration_errors(calibrated, targets, n_bins)
    return {
        "ece": before["ece"],
        "mce": before["mce"],
        "nll": nll(logits, targets),
        "ece_calibrated": after["ece"],
        "mce_calibrated": after["mce"],
        "nll_calibrated": nll(calibrated_logits, targets),
        "temperature": float(temperature),
        "reliability": {
            "raw": reliability_bins(raw, targets, n_bins),
            "calibrated": reliability_bins(calibrated, targets, n_bins),
        },
    }


def rescale_probabilities(probs: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T) from softmax(logits) (over the last dimension): p ** (1 / T), renormalised."""
    return (probs.double().clamp(min=0).log() / temperature).softmax(dim=-1)
