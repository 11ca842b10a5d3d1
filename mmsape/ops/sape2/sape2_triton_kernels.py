"""Triton kernels of exact SaPE² attention: forward and backward.

Only the ``@triton.jit`` functions live here; launching, autotuning and the
custom operators are in :mod:`.sape2_attention_triton`, which imports this
module when a kernel first runs (importing it needs Triton).

Per (batch * head) ``b`` and for logits in tiles of rows x columns:

    logits = scale * q k^T + sign * sum_a D_a,
    D_a    = root ? saferoot(qf_a kf_a^T, floor[b, a]) : qf_a kf_a^T,
    saferoot(x, f) = sqrt(x) if x > f else 0, with derivative 0.5 / sqrt(x) or 0.

Every kernel computes logits in base 2 (``qk_scale`` and ``bias_scale`` carry
the factor ``log2(e)``, so that ``exp2`` gives the softmax) and keeps the row
log-sum-exp in natural units. Products of the factors run in float32 with
IEEE precision (``input_precision="ieee"``): the matmul form of a squared
distance subtracts numbers of order ``|s|^2`` to get small distances, and
TF32's 10-bit mantissa would leave noise far above the rounding floor. The
q/k/v products run on tensor cores for half inputs (the precision option only
concerns float32 operands: float32 q/k/v take CUDA cores too, at full
precision).

Layout: q, k, out ``(B*H, N, D)``, v ``(B*H, N, DV)``, factors ``(B*H, N, W_a)``,
floors ``(B*H, NUM_AXES)``, lse and delta ``(B*H, N)``, all contiguous.
Block sizes are powers of two; head dims and factor widths are padded by
masked loads, token counts are masked at the tails.
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, INTERPRETER: tl.constexpr):
    """``a @ b + acc`` with float32 accumulation, for q/k/v-dtype operands.

    Triton 3.7's interpreter multiplies bfloat16 operands as their raw bits;
    there they are upcast first, which computes what tensor cores do (products
    of half values are exact in float32).
    """
    if INTERPRETER:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision='ieee')


@triton.jit
def _head_inputs(Q, K, V, QF0, KF0, QF1, KF1, FLOORS, num_tokens, head_dims, value_dims,
                 width0, width1, NUM_AXES: tl.constexpr):
    """This program's (batch * head): its first token's index, the inputs moved
    to its slices, and its floors."""
    head = tl.program_id(1).to(tl.int64)
    first = head * num_tokens
    floors = FLOORS + head * NUM_AXES
    return (first, Q + first * head_dims, K + first * head_dims, V + first * value_dims,
            QF0 + first * width0, KF0 + first * width0, QF1 + first * width1,
            KF1 + first * width1, tl.load(floors), tl.load(floors + NUM_AXES - 1))


@triton.jit
def _saved_rows(GRAD_OUT, LSE, DELTA, first, offsets, num_tokens, value_dims,
                BLOCK_ROWS: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``dO``, the lse in base 2 and ``delta`` of the queries ``offsets`` of the
    (batch * head) whose first token is ``first``."""
    valid = offsets < num_tokens
    grad_out = _load_rows(GRAD_OUT + first * value_dims, offsets, num_tokens, value_dims, 0,
                          BLOCK_ROWS, BLOCK_DV)
    lse = tl.load(LSE + first + offsets, mask=valid, other=0.) * 1.4426950408889634
    return grad_out, lse, tl.load(DELTA + first + offsets, mask=valid, other=0.)


@triton.jit
def _squared_distances(ROW_FACTORS, row_offsets, COL_FACTORS, col_offsets, width, num_tokens,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
                       BLOCK_F: tl.constexpr):
    """``ROW_FACTORS[rows] @ COL_FACTORS[cols]^T`` in float32, in chunks of the width.

    Looping over ``BLOCK_F`` columns keeps few registers live for any width
    (258 for a 256-wide grid costs 17 chunks of 16, not a 512-wide tile).
    """
    squared = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    for start in range(0, width, BLOCK_F):
        rows = _load_rows(ROW_FACTORS, row_offsets, num_tokens, width, start, BLOCK_ROWS,
                          BLOCK_F)
        cols = _load_rows(COL_FACTORS, col_offsets, num_tokens, width, start, BLOCK_COLS,
                          BLOCK_F)
        squared = tl.dot(rows, tl.trans(cols), squared, input_precision='ieee')
    return squared


@triton.jit
def _safe_root(squared, floor):
    """``(saferoot(squared, floor), d saferoot / d squared)``.

    One reciprocal square root gives both: ``sqrt(x) = x * rsqrt(x)`` and
    ``0.5 / sqrt(x) = 0.5 * rsqrt(x)``; at or below the floor both are 0.
    """
    kept = squared > floor
    inverse_root = tl.math.rsqrt(tl.where(kept, squared, 1.))
    distance = tl.where(kept, squared * inverse_root, 0.)
    slope = tl.where(kept, 0.5 * inverse_root, 0.)
    return distance, slope


@triton.jit
def _logits_tile(row_qk, col_qk, qk_scale, bias_scale, ROW_F0, COL_F0, width0, floor0, ROW_F1,
                 COL_F1, width1, floor1, row_offsets, col_offsets, num_tokens,
                 NUM_AXES: tl.constexpr, ROOT: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                 BLOCK_COLS: tl.constexpr, BLOCK_F: tl.constexpr, INTERPRETER: tl.constexpr):
    """Base-2 logits of a tile and, with ``ROOT``, each axis' ``d D_a / d sq_a``.

    Works in both orientations: rows are queries (``row_qk`` = q, ``ROW_F*`` =
    query factors) in the forward and dq kernels, keys in the dk/dv kernel,
    which then gets the transposed tile. Without ``ROOT`` the slopes are 1 and
    the returned ones are placeholders that callers do not read.
    """
    logits = _dot(row_qk, tl.trans(col_qk), None, INTERPRETER) * qk_scale
    squared0 = _squared_distances(ROW_F0, row_offsets, COL_F0, col_offsets, width0, num_tokens,
                                  BLOCK_ROWS, BLOCK_COLS, BLOCK_F)
    if ROOT:
        bias, slope0 = _safe_root(squared0, floor0)
    else:
        bias = squared0
        slope0 = squared0
    slope1 = slope0
    if NUM_AXES == 2:
        squared1 = _squared_distances(ROW_F1, row_offsets, COL_F1, col_offsets, width1,
                                      num_tokens, BLOCK_ROWS, BLOCK_COLS, BLOCK_F)
        if ROOT:
            distance1, slope1 = _safe_root(squared1, floor1)
            bias += distance1
        else:
            bias += squared1
    return logits + bias_scale * bias, slope0, slope1


@triton.jit
def _load_rows(BASE, offsets, num_tokens, width, start, BLOCK_ROWS: tl.constexpr,
               BLOCK_W: tl.constexpr):
    """``BASE[offsets, start:start + BLOCK_W]`` of a ``(N, width)`` matrix, 0 outside."""
    columns = start + tl.arange(0, BLOCK_W)
    return tl.load(BASE + offsets[:, None] * width + columns[None, :],
                   mask=(offsets < num_tokens)[:, None] & (columns < width)[None, :], other=0.)


@triton.jit
def _store_rows(BASE, values, offsets, num_tokens, width, start, BLOCK_W: tl.constexpr):
    """Store ``values`` at ``BASE[offsets, start:start + BLOCK_W]`` inside ``(N, width)``."""
    columns = start + tl.arange(0, BLOCK_W)
    tl.store(BASE + offsets[:, None] * width + columns[None, :],
             values.to(BASE.dtype.element_ty),
             mask=(offsets < num_tokens)[:, None] & (columns < width)[None, :])


@triton.jit
def _accumulate_factor_grad(GRAD, grad_tile, FACTORS, own_offsets, other_offsets, num_tokens,
                            width, BLOCK_OTHER: tl.constexpr, BLOCK_F: tl.constexpr):
    """``GRAD[own] += grad_tile @ FACTORS[other]`` in chunks of ``BLOCK_F`` columns.

    The gradient rows of ``own_offsets`` belong to this program alone, and it
    adds each tile's contribution to them in place (float32, read and written
    back while they sit in L1). Holding them in registers instead would cost
    ``rows x (L + 2)`` per axis across the whole loop, and the float32 products
    need their operands in registers too: measured with ptxas for sm_90, that
    spills from widths of about 130 on.
    """
    for start in range(0, width, BLOCK_F):
        factors = _load_rows(FACTORS, other_offsets, num_tokens, width, start, BLOCK_OTHER,
                             BLOCK_F)
        columns = start + tl.arange(0, BLOCK_F)
        pointers = GRAD + own_offsets[:, None] * width + columns[None, :]
        mask = (own_offsets < num_tokens)[:, None] & (columns < width)[None, :]
        partial = tl.load(pointers, mask=mask, other=0.)
        tl.store(pointers, tl.dot(grad_tile, factors, partial, input_precision='ieee'), mask=mask)


@triton.jit
def sape2_attention_forward_kernel(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, OUT, LSE,
        num_tokens, head_dims, value_dims, width0, width1, qk_scale, bias_scale,
        tokens_bucket,  # autotuning key only
        NUM_AXES: tl.constexpr, ROOT: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_F: tl.constexpr, INTERPRETER: tl.constexpr):
    """One program per (query tile, batch * head): online softmax over key tiles."""
    first, Q, K, V, QF0, KF0, QF1, KF1, floor0, floor1 = _head_inputs(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, num_tokens, head_dims, value_dims, width0,
        width1, NUM_AXES)
    OUT += first * value_dims
    LSE += first

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, rows, num_tokens, head_dims, 0, BLOCK_M, BLOCK_D)
    row_max = tl.full((BLOCK_M,), float('-inf'), tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for start in range(0, num_tokens, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(K, cols, num_tokens, head_dims, 0, BLOCK_N, BLOCK_D)
        logits, _, _ = _logits_tile(q, k, qk_scale, bias_scale, QF0, KF0, width0, floor0, QF1,
                                    KF1, width1, floor1, rows, cols, num_tokens, NUM_AXES,
                                    ROOT, BLOCK_M, BLOCK_N, BLOCK_F, INTERPRETER)
        logits = tl.where((cols < num_tokens)[None, :], logits, float('-inf'))
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        correction = tl.math.exp2(row_max - new_max)
        probs = tl.math.exp2(logits - new_max[:, None])
        row_sum = row_sum * correction + tl.sum(probs, 1)
        v = _load_rows(V, cols, num_tokens, value_dims, 0, BLOCK_N, BLOCK_DV)
        rounded = probs.to(v.dtype)
        acc = _dot(rounded, v, acc * correction[:, None], INTERPRETER)
        if v.dtype != tl.float32:
            # P = rounded + rest: a second tensor-core product with the rest
            # gives the output to float32 precision, which the backward's
            # delta = rowsum(dO * O) needs for the factors' gradients.
            acc = _dot((probs - rounded.to(tl.float32)).to(v.dtype), v, acc, INTERPRETER)
        row_max = new_max
    _store_rows(OUT, acc / row_sum[:, None], rows, num_tokens, value_dims, 0, BLOCK_DV)
    # Natural-log lse: log(sum exp(l)) = ln(2) * log2(sum 2^(l * log2(e))).
    tl.store(LSE + rows, (row_max + tl.math.log2(row_sum)) * 0.6931471805599453,
             mask=rows < num_tokens)


@triton.jit
def sape2_attention_backward_query_kernel(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, GRAD_OUT, LSE, DELTA, GRAD_Q, GRAD_QF0, GRAD_QF1,
        num_tokens, head_dims, value_dims, width0, width1, qk_scale, bias_scale, scale, sign,
        tokens_bucket,  # autotuning key only
        NUM_AXES: tl.constexpr, ROOT: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_F: tl.constexpr, INTERPRETER: tl.constexpr):
    """One program per (query tile, batch * head): dq and the query factors' gradients.

    Recomputes each tile's probabilities from the saved lse, then
    ``dS = P * (dO v^T - delta)``, ``dq += dS k`` (``scale`` applied at the end)
    and, per axis, ``d qf_a += sign * (dS * slope_a) kf_a`` into the
    zero-initialised ``GRAD_QF*``.
    """
    first, Q, K, V, QF0, KF0, QF1, KF1, floor0, floor1 = _head_inputs(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, num_tokens, head_dims, value_dims, width0,
        width1, NUM_AXES)
    GRAD_Q += first * head_dims
    GRAD_QF0 += first * width0
    GRAD_QF1 += first * width1

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < num_tokens
    q = _load_rows(Q, rows, num_tokens, head_dims, 0, BLOCK_M, BLOCK_D)
    grad_out, lse, delta = _saved_rows(GRAD_OUT, LSE, DELTA, first, rows, num_tokens,
                                       value_dims, BLOCK_M, BLOCK_DV)
    grad_q = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, num_tokens, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(K, cols, num_tokens, head_dims, 0, BLOCK_N, BLOCK_D)
        v = _load_rows(V, cols, num_tokens, value_dims, 0, BLOCK_N, BLOCK_DV)
        logits, slope0, slope1 = _logits_tile(q, k, qk_scale, bias_scale, QF0, KF0, width0,
                                              floor0, QF1, KF1, width1, floor1, rows, cols,
                                              num_tokens, NUM_AXES, ROOT, BLOCK_M, BLOCK_N,
                                              BLOCK_F, INTERPRETER)
        valid = row_valid[:, None] & (cols < num_tokens)[None, :]
        probs = tl.where(valid, tl.math.exp2(logits - lse[:, None]), 0.)
        grad_probs = _dot(grad_out, tl.trans(v), None, INTERPRETER)
        grad_logits = probs * (grad_probs - delta[:, None])
        grad_q = _dot(grad_logits.to(k.dtype), k, grad_q, INTERPRETER)
        grad_bias = grad_logits * sign
        _accumulate_factor_grad(GRAD_QF0, grad_bias * slope0 if ROOT else grad_bias, KF0, rows,
                                cols, num_tokens, width0, BLOCK_N, BLOCK_F)
        if NUM_AXES == 2:
            _accumulate_factor_grad(GRAD_QF1, grad_bias * slope1 if ROOT else grad_bias, KF1,
                                    rows, cols, num_tokens, width1, BLOCK_N, BLOCK_F)
        # The next tile reads the factor gradients back, maybe in other threads.
        tl.debug_barrier()
    _store_rows(GRAD_Q, grad_q * scale, rows, num_tokens, head_dims, 0, BLOCK_D)


@triton.jit
def sape2_attention_backward_key_kernel(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, GRAD_OUT, LSE, DELTA, GRAD_K, GRAD_V, GRAD_KF0,
        GRAD_KF1, num_tokens, head_dims, value_dims, width0, width1, qk_scale, bias_scale,
        scale, sign,
        tokens_bucket,  # autotuning key only
        NUM_AXES: tl.constexpr, ROOT: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_F: tl.constexpr, INTERPRETER: tl.constexpr):
    """One program per (key tile, batch * head): dk, dv and the key factors' gradients.

    Works on transposed tiles (rows are this program's ``BLOCK_N`` keys, columns
    ``BLOCK_M`` queries): ``dv += P^T dO``, ``dk += dS^T q``,
    ``d kf_a += sign * (dS * slope_a)^T qf_a`` into the zero-initialised ``GRAD_KF*``.
    """
    first, Q, K, V, QF0, KF0, QF1, KF1, floor0, floor1 = _head_inputs(
        Q, K, V, QF0, KF0, QF1, KF1, FLOORS, num_tokens, head_dims, value_dims, width0,
        width1, NUM_AXES)
    GRAD_K += first * head_dims
    GRAD_V += first * value_dims
    GRAD_KF0 += first * width0
    GRAD_KF1 += first * width1

    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    key_valid = keys < num_tokens
    k = _load_rows(K, keys, num_tokens, head_dims, 0, BLOCK_N, BLOCK_D)
    v = _load_rows(V, keys, num_tokens, value_dims, 0, BLOCK_N, BLOCK_DV)
    grad_k = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    grad_v = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    for start in range(0, num_tokens, BLOCK_M):
        queries = start + tl.arange(0, BLOCK_M)
        query_valid = queries < num_tokens
        q = _load_rows(Q, queries, num_tokens, head_dims, 0, BLOCK_M, BLOCK_D)
        grad_out, lse, delta = _saved_rows(GRAD_OUT, LSE, DELTA, first, queries, num_tokens,
                                           value_dims, BLOCK_M, BLOCK_DV)
        logits_t, slope0_t, slope1_t = _logits_tile(
            k, q, qk_scale, bias_scale, KF0, QF0, width0, floor0, KF1, QF1, width1, floor1,
            keys, queries, num_tokens, NUM_AXES, ROOT, BLOCK_N, BLOCK_M, BLOCK_F, INTERPRETER)
        valid = key_valid[:, None] & query_valid[None, :]
        probs_t = tl.where(valid, tl.math.exp2(logits_t - lse[None, :]), 0.)
        grad_v = _dot(probs_t.to(grad_out.dtype), grad_out, grad_v, INTERPRETER)
        grad_probs_t = _dot(v, tl.trans(grad_out), None, INTERPRETER)
        grad_logits_t = probs_t * (grad_probs_t - delta[None, :])
        grad_k = _dot(grad_logits_t.to(q.dtype), q, grad_k, INTERPRETER)
        grad_bias_t = grad_logits_t * sign
        _accumulate_factor_grad(GRAD_KF0, grad_bias_t * slope0_t if ROOT else grad_bias_t, QF0,
                                keys, queries, num_tokens, width0, BLOCK_M, BLOCK_F)
        if NUM_AXES == 2:
            _accumulate_factor_grad(GRAD_KF1, grad_bias_t * slope1_t if ROOT else grad_bias_t,
                                    QF1, keys, queries, num_tokens, width1, BLOCK_M, BLOCK_F)
        tl.debug_barrier()
    _store_rows(GRAD_K, grad_k * scale, keys, num_tokens, head_dims, 0, BLOCK_D)
    _store_rows(GRAD_V, grad_v, keys, num_tokens, value_dims, 0, BLOCK_DV)
