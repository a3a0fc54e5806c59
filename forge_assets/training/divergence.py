"""Divergence halt: the rule that stops a training run whose loss blows up, shared by both backends.

Fed the training loss of every logged step (both backends log it at every optimizer step), `DivergenceMonitor`
says when to stop:

- at the first non-finite loss (NaN or ±inf), always;
- when the loss has stayed above `divergence_factor` × its running minimum (the lowest finite loss logged so far)
  for `divergence_patience` logged steps in a row; a step at or below that line resets the count, so a single spike
  that recovers does not stop training. Patience 0 turns this rule off (the non-finite rule stays).
  Given the vocabulary size V, that line is never above CHANCE_SHARE × ln V once the running minimum is below it:
  ln V is the loss of a uniform guess, so a model whose loss climbs back to it has forgotten what it knew. A small
  model that dies at a huge learning rate sits exactly there (forge-tiny: ln 600 = 6.40, only 2.3× its first loss);
  a real base (ln V ≈ 11.9 for Qwen, starting near 1) reaches factor × minimum long before.

The backend then stops, keeps no adapter, removes the run's checkpoints (they hold the diverging run: resuming one
would only diverge again, or resume past the divergence) and raises `TrainingDiverged`, whose message says where it
diverged and what to change, in the project's "... Fix: ..." form.

    monitor = DivergenceMonitor.of(cfg)
    for step, loss in steps:
        if (d := monitor.update(step, loss)) is not None:
            break                                   # then: remove checkpoints, raise TrainingDiverged(d, cfg)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NON_FINITE, ABOVE = "non-finite", "above"
CHANCE_SHARE = 0.95  # of ln(vocabulary size): a loss this close to a uniform guess's counts as diverged


def _num(x: float) -> str:
    """A loss for a message: 4 decimals as in the step lines (`nan`, `inf` as they are)."""
    return f"{x:.4f}" if math.isfinite(x) else str(x)


@dataclass(frozen=True)
class Divergence:
    """Why training stopped: at `step` the loss was `loss`, non-finite or the last of `steps` logged steps in a row
    above `factor` × `minimum`."""

    step: int
    loss: float
    reason: str  # NON_FINITE or ABOVE
    factor: float
    minimum: float | None = None  # the running minimum (ABOVE)
    steps: int = 0  # logged steps in a row above factor x minimum (ABOVE)
    chance: float | None = None  # ln(vocabulary size), when the line was CHANCE_SHARE of it (ABOVE)

    def describe(self) -> str:
        """`training diverged at step 7: loss 41.2031 (above 3× its running minimum 2.1034 for 3 logged steps)`."""
        if self.reason == NON_FINITE:
            why = "non-finite"
        elif self.chance is not None:
            why = (f"at least {_num(CHANCE_SHARE * self.chance)}, {CHANCE_SHARE:.0%} of a uniform guess's loss ln V = {_num(self.chance)}, "
                   f"for {self.steps} logged steps, after a running minimum of {_num(self.minimum)}: the model has forgotten what it knew")
        else:
            why = f"above {self.factor:g}× its running minimum {_num(self.minimum)} for {self.steps} logged steps"
        return f"training diverged at step {self.step}: loss {_num(self.loss)} ({why})"


class TrainingDiverged(RuntimeError):
    """Training stopped because its loss diverged; the message says where, what was kept (nothing) and the fix."""

    def __init__(self, divergence: Divergence, learning_rate: float, patience: int):
        self.divergence = divergence
        lr = f"{learning_rate:g}"
        fix = f"Fix: lower training.learning_rate (now {lr}; a tenth, {learning_rate / 10:g}, is a good next try)"
        if divergence.reason == ABOVE and divergence.chance is not None:
            fix += (f", or, if the loss is expected to climb back to chance on this data, raise training.divergence_patience "
                    f"(now {patience}; 0 turns this rule off).")
        elif divergence.reason == ABOVE:
            fix += (f", or, if such spikes are expected on this data, raise training.divergence_factor (now "
                    f"{divergence.factor:g}) or training.divergence_patience (now {patience}; 0 turns this rule off).")
        else:
            fix += "; a NaN or inf loss always stops training."
        super().__init__(f"{divergence.describe()}. Training stopped there: no adapter is kept, and the run's checkpoints "
                         f"are removed, so a rerun starts from step 1. {fix}")


class DivergenceMonitor:
    """Fed (step, loss) at every logged step; `update` returns a `Divergence` once training must stop (then keeps
    returning it), else None."""

    def __init__(self, factor: float = 3.0, patience: int = 3, vocab_size: int | None = None):
        if factor <= 1:
            raise ValueError(f"divergence factor {factor} must be above 1")
        if patience < 0:
            raise ValueError(f"divergence patience {patience} must be 0 or more")
        self.factor, self.patience = float(factor), int(patience)
        self.chance = math.log(vocab_size) if vocab_size and vocab_size > 1 else None
        self.minimum: float | None = None
        self.streak = 0
        self.stopped: Divergence | None = None

    @classmethod
    def of(cls, cfg, vocab_size: int | None = None) -> "DivergenceMonitor":
        """The monitor a TrainingConfig asks for (training.divergence_factor / divergence_patience), for a model of
        `vocab_size` tokens when known."""
        return cls(cfg.divergence_factor, cfg.divergence_patience, vocab_size)

    def line(self) -> tuple[float, bool]:
        """The loss above which a step counts against the patience, and whether it is the chance line."""
        line = self.factor * self.minimum
        if self.chance is not None and self.minimum < CHANCE_SHARE * self.chance and CHANCE_SHARE * self.chance < line:
            return CHANCE_SHARE * self.chance, True
        return line, False

    def update(self, step: int, loss: float) -> Divergence | None:
        if self.stopped is not None:
            return self.stopped
        loss = float(loss)
        if not math.isfinite(loss):
            self.stopped = Divergence(int(step), loss, NON_FINITE, self.factor)
            return self.stopped
        if self.minimum is None or loss < self.minimum:
            self.minimum = loss
        line, by_chance = self.line()
        if self.patience and (loss > line or (by_chance and loss >= line)):
            self.streak += 1
            if self.streak >= self.patience:
                self.stopped = Divergence(int(step), loss, ABOVE, self.factor, self.minimum, self.streak,
                                          self.chance if by_chance else None)
        else:
            self.streak = 0
        return self.stopped

    def replay(self, curve) -> Divergence | None:
        """Feed a restored loss curve ([[step, loss], ...], from a checkpoint) so a resumed run judges as the
        uninterrupted one would."""
        for step, loss in curve:
            self.update(step, loss)
        return self.stopped
