"""TensorBoard event files of a run, in WORKDIR/tensorboard (view with `tensorboard --logdir WORKDIR`).

    with MetricWriter(workdir, enabled=distributed.is_chief()) as tb:
        tb.scalars(step, {"loss": 0.1, "reward/mean": 0.5})
        tb.image(step, "figures/pass_at_k", "figures/pass_at_k.png")

metrics.jsonl stays the record the project's own tools read (launch/plot.py, reports);
these files are a view of the same values for TensorBoard.
"""

from __future__ import annotations

import numbers
import os
import sys
import time

import numpy as np
from PIL import Image


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch (seconds, in every training
    process) when it is installed, only to accept torch tensors, which this writer never passes it."""
    block = "torch" not in sys.modules  # (an imported torch is already paid for)
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _summary_writer_class()

SUBDIR = "tensorboard"


class MetricWriter:
    """Scalars, text and figures of one run as TensorBoard events; a disabled writer writes no files."""

    def __init__(self, workdir: str, enabled: bool, purge_step: int | None = None):
        """`enabled`: False on all but the chief; `purge_step`: hides earlier writers' events at or after it."""
        self.logdir = os.path.join(workdir, SUBDIR)
        # tensorboardX names event files by the second and opens them with "wb": a second writer in the
        # same second would overwrite the first. The suffix keeps names unique and in creation order.
        # flush_secs=1: its flush() only writes events its thread has already taken off the queue, so
        # the thread's own flush is what puts the newest event on disk.
        self._writer = (SummaryWriter(self.logdir, purge_step=purge_step, flush_secs=1,
                                      filename_suffix=f".{time.time_ns()}") if enabled else None)

    def scalars(self, step: int, values: dict) -> None:
        """Logs each numeric value of `values` as a scalar at `step` (strings, None, lists are skipped)."""
        if self._writer is None:
            return
        for tag, value in values.items():
            if isinstance(value, numbers.Real):
                self._writer.add_scalar(tag, float(value), step)
        self.flush()  # as metrics.jsonl is flushed per line: a killed run loses at most the newest second

    def text(self, step: int, tag: str, text: str) -> None:
        """Logs `text` (rendered as markdown by TensorBoard) under `tag` at `step`."""
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def image(self, step: int, tag: str, png_path: str) -> None:
        """Logs the image file `png_path` (e.g. a saved figure) under `tag` at `step`."""
        if self._writer is not None:
            with Image.open(png_path) as png:
                self._writer.add_image(tag, np.asarray(png.convert("RGBA")), step, dataformats="HWC")

    def flush(self) -> None:
        """Writes the events logged so far to disk (the newest within about a second)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Writes every pending event and closes the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
