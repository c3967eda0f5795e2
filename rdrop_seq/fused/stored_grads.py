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

    A bf16/fp16 gradient is multiplied by the incoming gradient as a Python number,
    which the kernels apply in float32 (not rounded to the low-precision dtype first),
    divided by ``stored_scale`` where it was stored scaled (float16: ``FP16_GRAD_SCALE``).
    """
    def scaled(g: Tensor) -> Tensor:
        if g.dtype in LOW_PRECISION:
            return g.mul_(float(grad_loss) / stored_scale)
        return g.mul_(grad_loss.to(g.dtype))

    return [None if g is None else scaled(g).to(d) for g, d in zip(grads, dtypes)]
