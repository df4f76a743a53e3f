"""Explanations: heatmap methods (ScoreCAM, GradCAM, one registry), the layer they look at, facts about
a map, faithfulness metrics, overlays, and `PhotoExplainer` for one photo at a time."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "BaseCAM": "noodlenext.explain.base",
    "register_cam": "noodlenext.explain.base",
    "eval_mode": "noodlenext.explain.base",
    "ScoreCAM": "noodlenext.explain.scorecam",
    "GradCAM": "noodlenext.explain.gradcam",
    "create_cam": "noodlenext.explain.registry",
    "list_cams": "noodlenext.explain.registry",
    "parse_methods": "noodlenext.explain.registry",
    "HeatmapSettings": "noodlenext.explain.settings",
    "Heatmap": "noodlenext.explain.heatmaps",
    "explain_batch": "noodlenext.explain.heatmaps",
    "HeatmapFacts": "noodlenext.explain.facts",
    "heatmap_facts": "noodlenext.explain.facts",
    "deletion_insertion": "noodlenext.explain.faithfulness",
    "compare_methods": "noodlenext.explain.faithfulness",
    "target_layer": "noodlenext.explain.layers",
    "reshape_transform": "noodlenext.explain.layers",
    "overlay": "noodlenext.explain.overlays",
    "PhotoAnalysis": "noodlenext.explain.photo",
    "PhotoExplainer": "noodlenext.explain.photo",
    "explain_files": "noodlenext.explain.folder",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
