"""What an exported program (``torch.export``, .pt2) says of itself: its input shape, its batch
bounds and whether its batch norms use batch statistics; also what any net says of its input."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from invwnn.errors import InputError


def exported_input(ep) -> torch.Size | None:
    """Shape of an exported program's one user input as it was exported: ints where fixed,
    ``SymInt`` where dynamic (None when there is not exactly one tensor input)."""
    names = list(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(vals) != 1 or not torch.is_tensor(vals[0]):
        return None
    return vals[0].shape


def batch_stat_norms(ep) -> int:
    """How many batch-norm calls of an exported program use batch statistics (the module was in
    training mode when exported): their output depends on the other images of the batch."""
    count = 0
    for n in ep.graph.nodes:
        if n.op != "call_function" or "batch_norm" not in str(n.target) or "no_training" in str(n.target):
            continue
        schema = getattr(n.target, "_schema", None)
        names = [a.name for a in schema.arguments] if schema is not None else []
        if "training" in names:
            i = names.index("training")
            if (n.args[i] if i < len(n.args) else n.kwargs.get("training", False)) is True:
                count += 1
    return count


def expected_input(net: nn.Module, exported) -> tuple[int | None, tuple[int, int] | None]:
    """What the model itself says of its input: (channels, (H, W)), None where it does not say.
    An exported program gives its fixed dimensions; a module with real layers the input channels of
    its first convolution."""
    if exported is not None:
        shape = exported_input(exported)
        if shape is None or len(shape) != 4:
            return None, None
        c, h, w = (d if isinstance(d, int) else None for d in shape[1:])
        return c, (h, w) if h is not None and w is not None else None
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return (first.in_channels if first is not None else None), None


def bounded_batch(path: Path, exported, net: nn.Module) -> tuple[tuple[int | None, int | None], tuple[str, ...]]:
    """The fewest and the most images the exported program takes in one call when the most is
    bounded (both its batch size when fixed; the range of a dynamic batch dimension with a finite
    upper end), else ``(None, None)``; and the notes on what running it in micro-batches or with
    batch statistics changes. Also makes every parameter of ``net`` a leaf that requires grad, so
    methods can train it (refusing a graph whose parameters are not leaves)."""
    import sympy
    for name, p in net.named_parameters():
        if not p.is_leaf:
            raise InputError(f"{path}: parameter {name} of the exported program is not a leaf tensor; "
                             "it cannot be trained")
        p.requires_grad_(True)
    shape = exported_input(exported)
    lo = hi = None
    if shape is not None and len(shape):
        if isinstance(shape[0], int):
            lo = hi = shape[0]
        else:
            bounds = exported.range_constraints.get(shape[0].node.expr)
            if bounds is not None and isinstance(bounds.upper, sympy.Integer):  # not int_oo: bounded
                lo, hi = int(bounds.lower), int(bounds.upper)
    norms = batch_stat_norms(exported)
    notes = []
    if norms:
        notes.append(f"{norms} batch-norm layer(s) of the exported program were exported in training "
                     "mode: every forward pass, evaluation included, normalises with the batch's own "
                     "statistics and updates the running statistics")
    if norms and hi is not None:
        pad = (" (a last one of fewer than {lo} padded by repeating its images)", ", padding included") \
            if lo > 1 else ("", "")
        notes.append(f"the exported batch size is {'fixed at' if lo == hi else 'at most'} {hi}: larger "
                     f"batches run as micro-batches of {hi} images{pad[0].format(lo=lo)}, so those batch "
                     f"statistics are per micro-batch{pad[1]}, not per the method's batch")
    return (lo, hi), tuple(notes)
