"""Build the backend that an `llm` config names (conf/llm/*.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from noodlenext.llm.base import Backend, LLMError


def load_backend(llm: Any) -> Backend | None:
    """The loaded backend, or None for `llm=none`. Loading failures are LLMErrors that say what to do."""
    if llm is None or llm.get("backend") is None:
        return None
    try:
        return instantiate(llm.backend)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, LLMError):
            raise cause from None
        raise LLMError(f"llm={llm.get('name')}: cannot build its backend: {cause or err}") from err
