"""python ctrl_c_child.py READY OUT args...: `python -m noodlenext.explain args...`, except that the
classifier's first forward pass after an overlay appears in OUT waits for a signal, READY written first.

So a test sends Ctrl+C (SIGINT) at a moment it knows, mid-way through the first photo's ScoreCAM, rather
than hoping the command is still busy when its signal arrives.
"""

from __future__ import annotations

import runpy
import signal
import sys
from pathlib import Path

import torch
from timm.models.convnext import ConvNeXt

ready, out = Path(sys.argv[1]), Path(sys.argv[2])


def wait_for_ctrl_c(module: torch.nn.Module, args: tuple) -> None:
    if isinstance(module, ConvNeXt) and not ready.exists() and any(out.rglob("*.png")):
        ready.write_text("waiting for Ctrl+C")
        signal.pause()  # SIGINT's handler raises KeyboardInterrupt here, in the forward pass


torch.nn.modules.module.register_module_forward_pre_hook(wait_for_ctrl_c)
sys.argv = ["noodlenext.explain", *sys.argv[3:]]
runpy.run_module("noodlenext.explain", run_name="__main__", alter_sys=True)
