"""Language-model explanations of the classifier's decisions, and multi-turn chat about them."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "Backend": "noodlenext.llm.base",
    "LLMError": "noodlenext.llm.base",
    "Message": "noodlenext.llm.base",
    "load_backend": "noodlenext.llm.load",
    "ExplainRequest": "noodlenext.llm.prompt",
    "explain_messages": "noodlenext.llm.prompt",
    "ChatSession": "noodlenext.llm.session",
    "explain_session": "noodlenext.llm.session",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
