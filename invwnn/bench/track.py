"""The equal-forgetting protocol's watch on one method run: a :class:`Tracker` measures forget and
test accuracy on fixed subsets at each check and keeps a copy of the weights the first time the
forget accuracy drops to Retrain's level. Fine-tuning-style methods are checked after optimizer
steps (4 checks per doubling of the step count, and once more at their end), the rewinding methods
after each rewind (their fine-tuning steps move *away* from forgetting), task vector over its
negation scale alpha; one-shot methods have no stopping point. Check time is excluded from the
methods' run times."""
from __future__ import annotations

import copy
import math
import time
import torch
from torch import nn

from invwnn.audit.metrics import accuracy
from invwnn.bench.prepare import full_precision
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import trains


def due(step: int) -> bool:
    """Check after step ``step`` (1-based)? Four checks per doubling: steps 1-8 all, then every
    2nd up to 16, every 4th up to 32, ..."""
    interval = max(1, (1 << int(math.log2(step))) // 4)
    return step % interval == 0


class Tracker:
    """Watches one method run on ``model``: measures forget and test accuracy (percent) on fixed
    subsets at each check, records the trajectory, and keeps the weights of the first check whose
    UA (100 - forget acc) is at least ``target_ua``. ``check_seconds`` is the time spent checking."""

    def __init__(self, model: nn.Module, forget: Split, test: Split, target_ua: float, device: str):
        self.model, self.forget, self.test = model, forget, test
        self.target_ua, self.device = target_ua, device
        self.params = {id(p) for p in model.parameters()}
        self.steps, self.check_seconds, self.t0 = 0, 0.0, time.perf_counter()
        self.trajectory: list[dict] = []
        self.hit: tuple[dict, dict] | None = None

    def start(self) -> None:
        self.t0, self.check_seconds = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.check_seconds

    def on_step(self, optimizer, args, kwargs) -> None:
        if not trains(optimizer, self.params):
            return
        self.steps += 1
        if due(self.steps):
            self.check(step=self.steps)

    def on_iteration(self, i: int, model: nn.Module) -> None:
        self.check(step=self.steps, iteration=i + 1)

    def check(self, **where) -> None:
        """Measure at this point (``where``: step, iteration or alpha) and keep the weights of the
        first check at the target; eval mode for the measurement, each module's own mode after."""
        t = time.perf_counter()
        with full_precision(self.device):
            row = {**where, "forget_acc": accuracy(self.model, self.forget.x, self.forget.y, self.device),
                   "test_acc": accuracy(self.model, self.test.x, self.test.y, self.device),
                   "seconds": t - self.t0 - self.check_seconds}
        self.trajectory.append(row)
        if self.hit is None and 100.0 - row["forget_acc"] >= self.target_ua:
            self.hit = (row, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.check_seconds += time.perf_counter() - t


def subset(split: Split, n: int, seed: int) -> Split:
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.subset(idx.sort().values)


_WARM: set[str] = set()


def warm_up(model: nn.Module, forget: Split, device: str) -> None:
    """On an accelerator, one forward and backward pass on a copy before the first timed run in
    this process, so that the first method's time does not include kernel loading."""
    if device == "cpu" or device in _WARM:
        return
    twin = copy.deepcopy(model)
    twin(forget.x[:128].to(device)).sum().backward()
    _WARM.add(device)


@torch.no_grad()
def alpha_sweep(model: nn.Module, original: nn.Module, alpha: float, tracker: Tracker) -> None:
    """Task vector at 10%, 20%, ... 100% of ``alpha`` (the method's result is theta_0 - alpha *
    delta, so delta is recovered exactly); leaves the model at full alpha."""
    theta0 = [p.detach().to(tracker.device) for p in original.parameters()]
    delta = [(p0 - p) / alpha for p, p0 in zip(model.parameters(), theta0)]
    for f in [i / 10 for i in range(1, 11)]:
        for p, p0, d in zip(model.parameters(), theta0, delta):
            p.copy_(p0 - f * alpha * d)
        tracker.check(alpha=f * alpha)
