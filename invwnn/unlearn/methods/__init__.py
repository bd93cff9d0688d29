"""The unlearning methods: one registry, name -> :class:`Method` (function, config class). Each
function is ``(model, data, config, ctx) -> model`` and may modify ``model`` in place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from invwnn.unlearn.methods import (amun, boundary, finetune, fisher, invwnn, invwnn_plus, l1_sparse, mnemonic, neggrad,
                            neggrad_plus, random_label, regun, retrain, scrub, ssd, task_vector, unsir)
from invwnn.unlearn.methods.loop import Context, Data, MethodConfig


@dataclass(frozen=True)
class Method:
    run: Callable
    config: type[MethodConfig]
    doc: str


def _entry(module, run=None, config=None) -> Method:
    return Method(run or module.run, config or module.Config, (module.__doc__ or "").strip().split("\n")[0])


REGISTRY: dict[str, Method] = {
    "invwnn": _entry(invwnn),
    "invwnn+": _entry(invwnn_plus),
    "unsir": _entry(unsir),
    "mnemonic": _entry(mnemonic),
    "retrain": _entry(retrain),
    "finetune": _entry(finetune),
    "neggrad": _entry(neggrad),
    "neggrad+": _entry(neggrad_plus),
    "random-label": _entry(random_label),
    "salun": Method(random_label.run_salun, random_label.SalUnConfig,
                    "SalUn: random labels restricted to the most salient weights."),
    "boundary-shrink": _entry(boundary),
    "task-vector": _entry(task_vector),
    "scrub": _entry(scrub),
    "fisher": _entry(fisher),
    # the 2026 yardstick's leaders (BRIEF section 8; issue 23)
    "ssd": _entry(ssd),
    "l1-sparse": _entry(l1_sparse),
    "amun": _entry(amun),
    "regun": _entry(regun),
}

__all__ = ["REGISTRY", "Method", "Context", "Data", "MethodConfig"]
