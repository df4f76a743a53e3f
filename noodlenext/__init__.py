"""noodlenext: fine-tune, explain and chat about noodle image classifiers.

The public API, imported lazily (``import noodlenext`` loads neither torch nor lightning)::

    from noodlenext import NoodleDataModule, NoodleClassifier, load_classifier, create_cam

Layers, each importing only those below it: ``core`` → ``data`` → ``models`` → ``explain`` → ``llm``
→ ``callbacks`` → ``runs`` → the commands (``noodlenext.train``, ``eval``, ``predict``, ``explain``,
``chat``, ``app``, ``sweep``, ``data.check``), which nothing imports. See docs/architecture.md.
"""

from noodlenext.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "NoodleDataModule": "noodlenext.data.datamodule",
    "NoodleImages": "noodlenext.data.datamodule",
    "Augmentation": "noodlenext.data.transforms",
    "load_augmentation": "noodlenext.data.transforms",
    "eval_transform": "noodlenext.data.transforms",
    "load_rgb": "noodlenext.data.images",
    "find_images": "noodlenext.data.images",
    "render_dataset": "noodlenext.data.synthetic",
    # models
    "NoodleClassifier": "noodlenext.models.classifier",
    "load_classifier": "noodlenext.models.classifier",
    "create_backbone": "noodlenext.models.backbone",
    "predict_to_csv": "noodlenext.models.predictions",
    # explain
    "BaseCAM": "noodlenext.explain.base",
    "register_cam": "noodlenext.explain.base",
    "ScoreCAM": "noodlenext.explain.scorecam",
    "GradCAM": "noodlenext.explain.gradcam",
    "create_cam": "noodlenext.explain.registry",
    "list_cams": "noodlenext.explain.registry",
    "HeatmapSettings": "noodlenext.explain.settings",
    "Heatmap": "noodlenext.explain.heatmaps",
    "explain_batch": "noodlenext.explain.heatmaps",
    "HeatmapFacts": "noodlenext.explain.facts",
    "heatmap_facts": "noodlenext.explain.facts",
    "deletion_insertion": "noodlenext.explain.faithfulness",
    "target_layer": "noodlenext.explain.layers",
    "reshape_transform": "noodlenext.explain.layers",
    "overlay": "noodlenext.explain.overlays",
    "PhotoAnalysis": "noodlenext.explain.photo",
    "PhotoExplainer": "noodlenext.explain.photo",
    # llm
    "Backend": "noodlenext.llm.base",
    "LLMError": "noodlenext.llm.base",
    "load_backend": "noodlenext.llm.load",
    "PromptSettings": "noodlenext.llm.prompt",
    "ChatSession": "noodlenext.llm.session",
    "evidence_session": "noodlenext.llm.session",
    "check_explanation": "noodlenext.llm.grounding",
    # callbacks
    "TestReport": "noodlenext.callbacks.test_report",
    "HeatmapGallery": "noodlenext.callbacks.heatmap_gallery",
    "LLMExplanations": "noodlenext.callbacks.llm_explanations",
    "SweepComparison": "noodlenext.callbacks.sweep_comparison",
}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
