"""Callbacks that the configs name."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor set up for packed token blocks: logs ``train|items_per_sec``
    (tokens/s), and ``train|device/mfu`` where the device's peak FLOPs are known.

    Args:
        window_size: Batches in the rolling average.
    """

    def __init__(self, window_size: int = 50, **kwargs: Any) -> None:
        super().__init__(
            batch_size_fn=lambda batch: batch.size(0),
            length_fn=lambda batch: batch.size(0) * (batch.size(1) - 1),  # predicted tokens
            window_size=window_size,
            **kwargs,
        )
