"""Run logging: metrics.jsonl, TensorBoard event files and a console line per task."""

from __future__ import annotations

import json
import os

import numpy as np
from tensorboardX import SummaryWriter


class RunLogger:
    """Writes only where `enabled` (the chief process of a multi-process run)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, kind: str, step: int, values: dict, **context) -> None:
        """One JSON line `{kind, step, **context, **values}` and TensorBoard scalars `kind/name`."""
        if not self.enabled:
            return
        clean = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
                 for k, v in values.items()}
        self.jsonl.write(json.dumps({"kind": kind, "step": step, **context, **clean}) + "\n")
        self.jsonl.flush()
        for k, v in clean.items():
            if isinstance(v, float):
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
