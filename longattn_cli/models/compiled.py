"""``torch.compile`` for longattn models: each encoder layer compiled in place, its graph breaks named.

Layers are compiled one by one (``nn.Module.compile``) rather than the model as a whole: every layer runs the
same code, so one compilation serves all of them, the model keeps its class and its ``state_dict`` keys
(checkpoints and ``save_pretrained`` see no ``_orig_mod.`` prefix), and the embeddings and task heads stay
eager. Where a layer's code leaves what torch's compiler can trace (a data-dependent branch, a ``.tolist()``,
an autograd function with Python loops), the layer runs in several graphs with eager code between them: a
*graph break*. :func:`graph_breaks` reports them, counted by reason.
"""

from __future__ import annotations

from collections import Counter

from torch import nn


def compile_layers(model: nn.Module, **options) -> int:
    """Compile every :class:`~longattn_cli.models.modeling.LongAttnLayer` of ``model`` in place (the first
    call of each shape pays the compilation); returns how many were compiled."""
    from longattn_cli.models.modeling import LongAttnLayer

    count = 0
    for module in model.modules():
        if isinstance(module, LongAttnLayer):
            module.compile(**options)
            count += 1
    return count


def reset_graph_breaks() -> None:
    """Forget the graph breaks counted so far (and torch's compiled code), before measuring a new model."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def graph_breaks() -> Counter:
    """Graph breaks torch's compiler has met since :func:`reset_graph_breaks`, reason → count, each reason
    in one line (its first line, where torch gives several)."""
    from torch._dynamo.utils import counters

    out: Counter = Counter()
    for reason, count in counters["graph_break"].items():
        out[" ".join(str(reason).split("\n")[0].split())[:200]] += count
    return out


def describe_breaks(breaks: Counter, most: int = 3) -> str:
    """``"N graph breaks: reason (×k); …"`` in one line, the ``most`` commonest named."""
    total = sum(breaks.values())
    if not total:
        return "no graph breaks"
    named = "; ".join(f"{r} (×{c})" for r, c in breaks.most_common(most))
    more = f"; {len(breaks) - most} more" if len(breaks) > most else ""
    return f"{total} graph break{'s' * (total != 1)}: {named}{more}"
