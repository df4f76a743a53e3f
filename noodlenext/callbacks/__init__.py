"""Lightning callbacks (the test report, heatmap gallery and LLM explanations over a shared sample
collector) and the Hydra callback that compares the jobs of a sweep."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "Sample": "noodlenext.callbacks.samples",
    "SampleCollector": "noodlenext.callbacks.samples",
    "worst_mistakes": "noodlenext.callbacks.samples",
    "surest_hits": "noodlenext.callbacks.samples",
    "TestReport": "noodlenext.callbacks.test_report",
    "HeatmapGallery": "noodlenext.callbacks.heatmap_gallery",
    "LLMExplanations": "noodlenext.callbacks.llm_explanations",
    "SweepComparison": "noodlenext.callbacks.sweep_comparison",
    "write_comparison": "noodlenext.callbacks.sweep_comparison",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
