"""Can the model hub be reached? Decided in seconds, so nothing hangs offline."""

from __future__ import annotations

import os
import socket
import threading

HUB_HOST = ("huggingface.co", 443)
NETWORK_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """DNS and connect both bounded by `timeout` seconds; HF_HUB_OFFLINE=1 answers no at once."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
