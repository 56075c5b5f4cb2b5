"""Early stopping on the in-domain validation loss, with the best weights kept (the paper's protocol
for its smallest in-domain set).

Every `every` fine-tuning steps (and at the last one) the trainer scores the held-out split of the
in-domain sample. A lower loss than every earlier one makes these weights the best; `patience`
validations in a row without one stop the phase, and the best weights become the model. The state
travels in each checkpoint (with a copy of the best weights beside it), so a killed run resumes
to the same decisions and bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BEST = "best.safetensors"
"""The best weights so far, inside each checkpoint directory."""


@dataclass
class EarlyStop:
    patience: int
    every: int
    best_loss: float = math.inf
    best_step: int = 0
    bad: int = 0
    """Validations since the best one."""
    stopped_at: int | None = None
    validations: int = 0

    def due(self, step: int, last: int) -> bool:
        """Whether step `step` (1-based, of `last`) is validated."""
        return step % self.every == 0 or step == last

    def update(self, step: int, loss: float) -> bool:
        """Record the validation loss at `step`; returns whether it is the best so far."""
        self.validations += 1
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad = loss, step, 0
            return True
        self.bad += 1
        if self.bad >= self.patience:
            self.stopped_at = step
        return False

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def state(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> EarlyStop:
        d = dict(d)
        d["best_loss"] = math.inf if d.get("best_loss") is None else d["best_loss"]
        return cls(**d)

    def summary(self, steps: int) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_val_loss": self.best_loss, "stopped_at": self.stopped_at,
                "steps_planned": steps, "validations": self.validations, "patience": self.patience,
                "every": self.every}
