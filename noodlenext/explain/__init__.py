"""Explanations: which layer to look at, Score-CAM and Grad-CAM heatmaps, and heatmap overlays."""

from noodlenext.explain.gradcam import gradcam
from noodlenext.explain.layers import reshape_transform, target_layer
from noodlenext.explain.overlay import overlay
from noodlenext.explain.scorecam import ScoreCAM

__all__ = ["ScoreCAM", "gradcam", "overlay", "reshape_transform", "target_layer"]
