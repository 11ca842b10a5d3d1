"""The autograd formula shared by the custom operators of exact SaPE² attention.

Every kernel of :func:`~.block_attention.sape2_block_attention` is a pair of
PyTorch custom operators (``torch.library.custom_op``, namespace ``mmsape``),
so that ``torch.compile`` traces it as one node without a graph break and
``torch.export`` records one op:

* the forward operator ``(q, k, v, query_factors, key_factors, floors, root,
  sign, *options) -> (out, lse)``, ``lse`` the row log-sum-exp of the logits;
* the backward operator ``(grad_out, q, k, v, out, lse, query_factors,
  key_factors, floors, root, sign, *options) -> (grad_q, grad_k, grad_v,
  grad_query_factors, grad_key_factors)``, which recomputes the probabilities
  from ``lse``.

:func:`register_attention_autograd` connects the two.
"""
from typing import Optional

from torch import Tensor
from torch.autograd.function import FunctionCtx


def register_attention_autograd(forward_op, backward_op) -> None:
    """Make ``forward_op`` differentiable through ``backward_op``.

    Saved for backward: the inputs, the output and the row log-sum-exp, i.e.
    O(N) per head. ``lse`` is not differentiable (the kernels' backward has no
    term for it); the floors get no gradient (they are a rounding threshold).
    Not twice differentiable: the backward operator has no autograd formula.

    Args:
        forward_op: A custom operator with the forward signature of the module
            docstring.
        backward_op: Its backward operator.
    """

    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        q, k, v, query_factors, key_factors, floors, root, sign, *options = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse, floors, *query_factors, *key_factors)
        ctx.num_axes = len(query_factors)
        ctx.arguments = (root, sign, *options)

    def backward(ctx: FunctionCtx, grad_out: Tensor, grad_lse: Optional[Tensor]) -> tuple:
        q, k, v, out, lse, floors, *factors = ctx.saved_tensors
        query_factors, key_factors = factors[:ctx.num_axes], factors[ctx.num_axes:]
        grad_q, grad_k, grad_v, grad_query_factors, grad_key_factors = backward_op(
            grad_out.contiguous(), q, k, v, out, lse, query_factors, key_factors, floors,
            *ctx.arguments)
        return (grad_q, grad_k, grad_v, grad_query_factors, grad_key_factors,
                *[None] * (len(ctx.arguments) + 1))

    forward_op.register_autograd(backward, setup_context=setup_context)


__all__ = ['register_attention_autograd']
