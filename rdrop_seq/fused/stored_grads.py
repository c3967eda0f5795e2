"""The gradients a fused loss forms in its forward: handed to the backward once, scaled there.

Every fused loss's autograd function stores its input gradients in ``ctx.grads`` (bf16
ones in bf16, the others in the accumulation dtype; see the paths) and its backward,
``@once_differentiable`` (there is no graph to differentiate again), only multiplies them
by the incoming gradient.
"""

from torch import Tensor

from rdrop_seq.fused.precision import LOW_PRECISION


def consume_stored_grads(ctx, what: str):
    """The gradients a forward stored in ``ctx.grads``, handed out once (the backward runs once)."""
    if ctx.grads is None:
        raise RuntimeError(
            f"{what}: backward called twice (its stored gradients are consumed by the first backward)"
        )
    grads, ctx.grads = ctx.grads, None
    return grads


def scale_stored_grads(grads, dtypes, grad_loss: Tensor, stored_scale: float = 1.0):
    """Each stored gradient times the incoming one (in place), in its input's dtype (None stays None).

    A bf16/fp16 gradient is multiplied by the incoming gradient in float32 (not rounded
    to the low-precision dtype first), divided by ``stored_scale`` where it was stored
    scaled (float16: ``FP16_GRAD_SCALE``).  On a CPU the incoming gradient is read as a
    Python number; on an accelerator it stays there (``mul_in_float32``): reading it
    would wait for the device at every backward.
    """
    def scaled(g: Tensor) -> Tensor:
        if g.dtype not in LOW_PRECISION:
            return g.mul_(grad_loss.to(g.dtype))
        if grad_loss.device.type == "cpu":
            return g.mul_(float(grad_loss) / stored_scale)
        return mul_in_float32(g, grad_loss.float() / stored_scale)

    return [None if g is None else scaled(g).to(d) for g, d in zip(grads, dtypes)]


def mul_in_float32(g: Tensor, factor: Tensor, elements: int = 1 << 22) -> Tensor:
    """``g *= factor`` (a 0-dim float32 tensor on ``g``'s device) computed in float32 and
    rounded once to ``g``'s dtype, as ``g.mul_(float(factor))`` computes it, without reading
    ``factor`` on the host.  (``g.mul_(factor)`` would round ``factor`` to ``g``'s dtype
    first: a float16 loss scale of 2^16 would become infinity.)  Row blocks of about
    ``elements`` entries bound the float32 temporary."""
    blocks = g.split(max(1, elements // max(1, g[0].numel()))) if g.dim() else (g,)
    for block in blocks:
        block.copy_(block.float().mul_(factor))
    return g
