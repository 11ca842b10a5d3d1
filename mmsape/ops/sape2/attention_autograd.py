"""The autograd formula shared by the custom operators of exact SaPE² attention.

Every kernel of :func:`~.block_attention.sape2_block_attention` and
:func:`~.lookup_attention.lookup_block_attention` is a pair of PyTorch custom
operators (``torch.library.custom_op``, namespace ``mmsape``), so that
``torch.compile`` traces it as one node without a graph break and
``torch.export`` records one op:

* the forward operator ``(q, k, v, *bias_inputs, *options) -> (out, lse)``,
  ``lse`` the row log-sum-exp of the logits; ``bias_inputs`` are tensors (or
  lists of tensors, or None) that define the bias, e.g. the per-axis distance
  factors and their floors;
* the backward operator ``(grad_out, q, k, v, out, lse, *bias_inputs, *options)
  -> (grad_q, grad_k, grad_v, *grad_bias_inputs)``, which recomputes the
  probabilities from ``lse``.

:func:`register_attention_autograd` connects the two;
:func:`fake_attention_outputs` is what every forward operator returns for fake
(meta) tensors, and :func:`heads_first` the layout the kernels take their
tensors in.
"""
from typing import List, Optional, Sequence, Tuple

from torch import Tensor
from torch.autograd.function import FunctionCtx

#: Per forward argument: None for a tensor (or None), the length of a list of tensors.
_Structure = List[Optional[int]]


def register_attention_autograd(forward_op, backward_op, num_tensor_args: int) -> None:
    """Make ``forward_op`` differentiable through ``backward_op``.

    Saved for backward: the inputs, the output and the row log-sum-exp, i.e.
    O(N) per head. ``lse`` is not differentiable (the kernels' backward has no
    term for it); inputs after the gradients ``backward_op`` returns (a rounding
    floor) and the options get none. Not twice differentiable: the backward
    operator has no autograd formula.

    Args:
        forward_op: A custom operator with the forward signature of the module
            docstring.
        backward_op: Its backward operator.
        num_tensor_args (int): How many leading arguments of ``forward_op`` are
            tensors or lists of tensors (q, k, v and the bias inputs); the
            others are options, passed on to ``backward_op``.
    """

    def setup_context(ctx: FunctionCtx, inputs: tuple, output: tuple) -> None:
        out, lse = output
        ctx.mark_non_differentiable(lse)
        tensors, ctx.structure = _flatten(inputs[:num_tensor_args])
        ctx.save_for_backward(out, lse, *tensors)
        ctx.options = inputs[num_tensor_args:]

    def backward(ctx: FunctionCtx, grad_out: Tensor, grad_lse: Optional[Tensor]) -> tuple:
        out, lse, *tensors = ctx.saved_tensors
        q, k, v, *bias_inputs = _unflatten(tensors, ctx.structure)
        grads = backward_op(grad_out.contiguous(), q, k, v, out, lse, *bias_inputs,
                            *ctx.options)
        return (*grads, *[None] * (num_tensor_args - len(grads) + len(ctx.options)))

    forward_op.register_autograd(backward, setup_context=setup_context)


def fake_attention_outputs(q: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """A forward operator's ``(out, lse)`` for fake tensors: contiguous, like the
    kernels' outputs, in the shapes and dtype of v and of q's rows."""
    return v.new_empty(v.shape), q.new_empty(q.shape[:-1])


def heads_first(tensor: Tensor) -> Tensor:
    """``(..., N, C)`` -> contiguous ``(B*heads, N, C)``: every (batch, head) a
    row-major ``N x C`` matrix, the layout the kernels walk over."""
    return tensor.reshape(-1, *tensor.shape[-2:]).contiguous()


def _flatten(arguments: Sequence) -> Tuple[list, _Structure]:
    """Tensors (and Nones) of ``arguments``, lists unpacked, and how to repack them."""
    flat, structure = [], []
    for argument in arguments:
        if isinstance(argument, (list, tuple)):
            flat.extend(argument)
            structure.append(len(argument))
        else:
            flat.append(argument)
            structure.append(None)
    return flat, structure


def _unflatten(flat: Sequence, structure: _Structure) -> list:
    arguments, start = [], 0
    for length in structure:
        if length is None:
            arguments.append(flat[start])
            start += 1
        else:
            arguments.append(list(flat[start:start + length]))
            start += length
    return arguments


__all__ = ['fake_attention_outputs', 'heads_first', 'register_attention_autograd']
