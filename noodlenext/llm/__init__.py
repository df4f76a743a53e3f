"""Language-model explanations of the classifier's decisions, and multi-turn chat about them."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "Backend": "noodlenext.llm.base",
    "LLMError": "noodlenext.llm.base",
    "Message": "noodlenext.llm.base",
    "load_backend": "noodlenext.llm.load",
    "PromptSettings": "noodlenext.llm.prompt",
    "evidence_messages": "noodlenext.llm.prompt",
    "ChatSession": "noodlenext.llm.session",
    "evidence_session": "noodlenext.llm.session",
    "check_explanation": "noodlenext.llm.grounding",
    "Deadline": "noodlenext.llm.deadline",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
