"""Atomic file writes (write a temp file beside the target, then rename), with no heavy imports: the
Hydra sweep callback and the data check use them, and they run before any model code is needed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write then rename: a crash mid-write never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(text)
    os.chmod(f.name, 0o644)  # temp files are created 0600; results are for everyone to read
    os.replace(f.name, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))
