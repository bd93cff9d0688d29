"""The unlearning methods: one registry, name -> :class:`Method` (function, config class, and when
to check it). Each function is ``(model, data, config, ctx) -> model`` and may modify ``model`` in place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from invwnn.unlearn.methods import (amun, boundary, finetune, fisher, invwnn, invwnn_plus, l1_sparse, mnemonic, neggrad,
                                    neggrad_plus, random_label, regun, retrain, scrub, ssd, task_vector, unsir)
from invwnn.unlearn.methods.loop import Context, Data, MethodConfig


@dataclass(frozen=True)
class Method:
    """``guard``: when `invwnn apply`'s guard checks the method: "step" (after each step of an
    optimizer that trains the model), "iteration" (after each rewind: the fine-tuning steps inside an
    iteration move *away* from forgetting, so their weights are no result) or "end" (only the
    result: one-shot methods and those whose intermediate weights are no result either:
    task-vector's forget fine-tuning before the negation, UNSIR's deliberate impair epoch,
    retrain's fresh network). ``stop``: where the bench's equal-forgetting protocol may stop it:
    "step", "iteration", "alpha" (task-vector: along its negation's scale) or "none" (runs whole)."""

    run: Callable
    config: type[MethodConfig]
    doc: str
    guard: str = "step"
    stop: str = "step"


def _entry(module, run=None, config=None, doc=None, **when) -> Method:
    return Method(run or module.run, config or module.Config, doc or (module.__doc__ or "").strip().split("\n")[0],
                  **when)


REGISTRY: dict[str, Method] = {
    "invwnn": _entry(invwnn, guard="iteration", stop="iteration"),
    "invwnn+": _entry(invwnn_plus, guard="iteration", stop="iteration"),
    "unsir": _entry(unsir, guard="end", stop="none"),
    "mnemonic": _entry(mnemonic, guard="end", stop="none"),
    "retrain": _entry(retrain, guard="end"),
    "finetune": _entry(finetune),
    "neggrad": _entry(neggrad),
    "neggrad+": _entry(neggrad_plus),
    "random-label": _entry(random_label),
    "salun": _entry(random_label, random_label.run_salun, random_label.SalUnConfig,
                    "SalUn: random labels restricted to the most salient weights."),
    "boundary-shrink": _entry(boundary),
    "task-vector": _entry(task_vector, guard="end", stop="alpha"),
    "scrub": _entry(scrub),
    "fisher": _entry(fisher, guard="end", stop="none"),
    "ssd": _entry(ssd, guard="end", stop="none"),
    "l1-sparse": _entry(l1_sparse),
    "amun": _entry(amun),
    "regun": _entry(regun),
}

__all__ = ["REGISTRY", "Method", "Context", "Data", "MethodConfig"]
