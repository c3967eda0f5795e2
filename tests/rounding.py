"""Tolerances derived from floating-point rounding, for tests that compare two code paths
whose operations differ (another summation order, another chunking of a matrix product).

Two such paths agree bitwise on one CPU and not on another: the matrix-multiply library
picks its kernels (and so its summation order) by the processor's instruction sets.  A
test comparing them therefore states the bound that rounding allows, derived here from
the unit roundoff ``u`` of the dtype (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., sections 3.1 and 4.2):

* a sum of ``n`` terms, in any order, is within ``gamma(n) * sum |x_i|`` of the exact sum,
  with ``gamma(n) = n u / (1 - n u)``; two orders of a sum of same-sign terms therefore
  differ by at most ``2 gamma(n)`` relative to the sum (:func:`sum_rtol`);
* an entry of a matrix product with inner dimension ``d`` (plus a bias) is within
  ``gamma(d + 1) * (|a| |b| + |bias|)`` of the exact value (:func:`matmul_error`).

Tests whose two sides run the same operations in the same order stay bitwise: that holds
on every CPU, and they need nothing from here.
"""

import torch

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def gamma(n: int, dtype=torch.float32) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` roundings."""
    nu = n * UNIT_ROUNDOFF[dtype]
    if nu >= 1:
        raise ValueError(f"gamma({n}) is unbounded in {dtype}")
    return nu / (1 - nu)


def sum_rtol(n: int, dtype=torch.float32) -> float:
    """Relative bound on the difference of two summation orders of ``n`` same-sign terms."""
    return 2 * gamma(n, dtype)


def matmul_error(a: torch.Tensor, b: torch.Tensor, bias=None, dtype=torch.float32) -> torch.Tensor:
    """Entrywise bound on the rounding error of ``a @ b.T (+ bias)`` computed in ``dtype``,
    whatever the kernel's summation order."""
    magnitude = a.double().abs() @ b.double().abs().T
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    return gamma(a.size(-1) + 1, dtype) * magnitude


def argmax_may_differ(scores: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Rows whose argmax two computations of ``scores``, each within ``error`` (entrywise) of
    the exact values, may disagree on: the top two are within twice the row's largest error."""
    top2 = scores.double().topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) <= 2 * error.amax(dim=-1)
