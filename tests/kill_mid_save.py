"""python kill_mid_save.py MODE PATH: start saving to PATH, and SIGKILL this process halfway.

MODE torch: plain torch.save (the harness check: it leaves a broken file); atomic: AtomicCheckpointIO;
json: write_json_atomic, killed after writing the temp file and before renaming it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


class KillWhenPickled:
    def __reduce__(self) -> tuple:
        os.kill(os.getpid(), signal.SIGKILL)
        return (int, ())


mode, path = sys.argv[1:3]
if mode == "json":
    from noodlenext.core.files import write_json_atomic

    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    write_json_atomic(Path(path), {"test/acc": 0.5})
else:
    import torch

    checkpoint = {"state_dict": {"w": torch.ones(100_000)}, "mid_save": KillWhenPickled()}
    if mode == "torch":
        torch.save(checkpoint, path)
    else:
        from noodlenext.runs.checkpoint_io import AtomicCheckpointIO

        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
raise SystemExit("not killed")
