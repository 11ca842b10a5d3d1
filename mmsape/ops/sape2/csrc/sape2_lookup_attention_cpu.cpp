// Query-relative SaPE² attention with the lookup bias on the CPU, fused and
// tiled (FlashAttention-2 style).
//
// For every (batch, head) b, with the patch tokens in row-major order after
// `prefix` class / register tokens, token n at column x(n) and row y(n):
//
//   logits[i, n] = scale * q_i . k_n + zx[i, x(n)] + zy[i, y(n)]   (i, n patch tokens)
//   logits[i, n] = scale * q_i . k_n                                (otherwise)
//   out = softmax(logits) v,
//
// where zx[i] (length W) and zy[i] (length H) are token i's SaPE vectors read
// at the query-relative contextual positions (lookup_factors in functional.py).
//
// The N x N logits never exist: tokens are taken in square tiles of kTile; the
// products are one BLAS sgemm per tile, and the bias is added to a logits tile
// in one vectorised pass. The keys of a tile split into segments of one grid
// row each, so that a segment's bias is the contiguous slice zx[i, x0 : x0 + len]
// plus the scalar zy[i, y]; backward reduces dS into dzx by the same slices and
// into dzy by the segments' sums. Forward keeps the row-wise log-sum-exp;
// backward recomputes each tile's probabilities from it.
//
// Memory: a few tile buffers per thread plus O(N * (d + W + H)) per
// (batch, head). Threads split the (batch, head) pairs. Float32, contiguous
// tensors only; the Python dispatcher (lookup_block_attention in
// lookup_attention.py) checks and falls back to the Python kernel otherwise.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "cpu_attention_tiles.h"

namespace {

using namespace sape2_cpu;

// Keys of one column tile that lie in one grid row: tile columns
// [offset, offset + length) are grid cells (row, column .. column + length).
struct Segment {
  int64_t offset, row, column, length;
};

// The grid-row segments of the keys [col0, col0 + cols); prefix keys have none.
std::vector<Segment> key_segments(int64_t col0, int64_t cols, int64_t prefix, int64_t width) {
  std::vector<Segment> segments;
  for (int64_t n = std::max(col0, prefix); n < col0 + cols;) {
    const int64_t cell = n - prefix, row = cell / width, column = cell % width;
    const int64_t length = std::min(width - column, col0 + cols - n);
    segments.push_back({n - col0, row, column, length});
    n += length;
  }
  return segments;
}

// The key segments of every column tile of kTile tokens.
std::vector<std::vector<Segment>> tile_segments(int64_t tokens, int64_t prefix, int64_t width) {
  std::vector<std::vector<Segment>> tiles;
  for (int64_t col0 = 0; col0 < tokens; col0 += kTile) {
    tiles.push_back(key_segments(col0, std::min(kTile, tokens - col0), prefix, width));
  }
  return tiles;
}

// logits[r, :] += bias of query row0 + r for the keys of `segments`.
void add_lookup_bias(const float* zx, const float* zy, int64_t height, int64_t width,
                     int64_t prefix, int64_t row0, int64_t rows,
                     const std::vector<Segment>& segments, float* logits) {
  for (int64_t i = std::max(row0, prefix); i < row0 + rows; ++i) {
    const float* zxi = zx + (i - prefix) * width;
    const float* zyi = zy + (i - prefix) * height;
    float* out = logits + (i - row0) * kTile;
    for (const Segment& s : segments) {
      float* o = out + s.offset;
      const float* z = zxi + s.column;
      const Vec vy(zyi[s.row]);
      int64_t c = 0;
      for (; c + Vec::size() <= s.length; c += Vec::size()) {
        (Vec::loadu(o + c) + Vec::loadu(z + c) + vy).store(o + c);
      }
      for (; c < s.length; ++c) o[c] += z[c] + zyi[s.row];
    }
  }
}

// dzx[i, x(n)] += dS[i, n] and dzy[i, y(n)] += dS[i, n] over the keys of `segments`.
void reduce_lookup_grad(const float* grad_logits, int64_t height, int64_t width, int64_t prefix,
                        int64_t row0, int64_t rows, const std::vector<Segment>& segments,
                        float* dzx, float* dzy) {
  for (int64_t i = std::max(row0, prefix); i < row0 + rows; ++i) {
    float* dzxi = dzx + (i - prefix) * width;
    float* dzyi = dzy + (i - prefix) * height;
    const float* g = grad_logits + (i - row0) * kTile;
    for (const Segment& s : segments) {
      const float* gs = g + s.offset;
      float* d = dzxi + s.column;
      Vec vsum(0.f);
      int64_t c = 0;
      for (; c + Vec::size() <= s.length; c += Vec::size()) {
        const Vec gv = Vec::loadu(gs + c);
        (Vec::loadu(d + c) + gv).store(d + c);
        vsum = vsum + gv;
      }
      float sum = vsum.reduce_add();
      for (; c < s.length; ++c) {
        d[c] += gs[c];
        sum += gs[c];
      }
      dzyi[s.row] += sum;
    }
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& zx, const at::Tensor& zy, int64_t height, int64_t width,
                  int64_t prefix) {
  for (const at::Tensor* t : {&q, &k, &v, &zx, &zy}) {
    TORCH_CHECK(t->dim() == 3 && t->is_contiguous() && t->scalar_type() == at::kFloat &&
                    t->device().is_cpu() && t->size(0) == q.size(0),
                "sape2 lookup CPU kernel: q, k, v, zx, zy must be contiguous float32 "
                "(BH, tokens, C) CPU tensors");
  }
  TORCH_CHECK(k.sizes() == q.sizes() && v.size(1) == q.size(1),
              "sape2 lookup CPU kernel: q, k, v shapes disagree");
  TORCH_CHECK(prefix >= 0 && height > 0 && width > 0 && q.size(1) == prefix + height * width,
              "sape2 lookup CPU kernel: the grid does not match the token count");
  TORCH_CHECK(zx.size(1) == height * width && zx.size(2) == width &&
                  zy.size(1) == height * width && zy.size(2) == height,
              "sape2 lookup CPU kernel: zx must be (BH, H*W, W) and zy (BH, H*W, H)");
}

}  // namespace

// Returns {out (BH, N, dv), lse (BH, N)}.
std::vector<at::Tensor> sape2_lookup_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, const at::Tensor& zx,
                                                       const at::Tensor& zy, int64_t height,
                                                       int64_t width, int64_t prefix,
                                                       double scale) {
  check_inputs(q, k, v, zx, zy, height, width, prefix);
  const int64_t tokens = q.size(1), head_dims = q.size(2), value_dims = v.size(2);
  // Unnormalised output rows accumulate in `out`; divided by the row sums at the end.
  at::Tensor out = at::zeros_like(v);
  at::Tensor lse = at::empty({q.size(0), tokens}, q.options());
  const float fscale = static_cast<float>(scale);
  const std::vector<std::vector<Segment>> segments = tile_segments(tokens, prefix, width);

  at::parallel_for(0, q.size(0), 1, [&](int64_t begin, int64_t end) {
    TileBuffers buffers(1);
    float* logits = buffers.tiles[0];
    float row_maxes[kTile], row_sums[kTile];
    for (int64_t bh = begin; bh < end; ++bh) {
      const float* qh = q.data_ptr<float>() + bh * tokens * head_dims;
      const float* kh = k.data_ptr<float>() + bh * tokens * head_dims;
      const float* vh = v.data_ptr<float>() + bh * tokens * value_dims;
      const float* zxh = zx.data_ptr<float>() + bh * zx.size(1) * width;
      const float* zyh = zy.data_ptr<float>() + bh * zy.size(1) * height;
      float* oh = out.data_ptr<float>() + bh * tokens * value_dims;
      float* lh = lse.data_ptr<float>() + bh * tokens;
      for (int64_t row0 = 0; row0 < tokens; row0 += kTile) {
        const int64_t rows = std::min(kTile, tokens - row0);
        std::fill(row_maxes, row_maxes + rows, -std::numeric_limits<float>::infinity());
        std::fill(row_sums, row_sums + rows, 0.f);
        float* out_rows = oh + row0 * value_dims;
        for (int64_t col0 = 0, tile = 0; col0 < tokens; col0 += kTile, ++tile) {
          const int64_t cols = std::min(kTile, tokens - col0);
          gemm(false, true, rows, cols, head_dims, fscale, qh + row0 * head_dims, head_dims,
               kh + col0 * head_dims, head_dims, 0.f, logits, kTile);
          add_lookup_bias(zxh, zyh, height, width, prefix, row0, rows, segments[tile], logits);
          online_softmax_tile(logits, rows, cols, row_maxes, row_sums, out_rows, value_dims);
          gemm(false, false, rows, value_dims, cols, 1.f, logits, kTile, vh + col0 * value_dims,
               value_dims, 1.f, out_rows, value_dims);
        }
        for (int64_t r = 0; r < rows; ++r) {
          const float inverse_sum = 1.f / row_sums[r];
          float* out_row = out_rows + r * value_dims;
          for (int64_t c = 0; c < value_dims; ++c) out_row[c] *= inverse_sum;
          lh[row0 + r] = row_maxes[r] + std::log(row_sums[r]);
        }
      }
    }
  });
  return {out, lse};
}

// Returns {grad_q, grad_k, grad_v, grad_zx, grad_zy}.
std::vector<at::Tensor> sape2_lookup_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& zx, const at::Tensor& zy,
    int64_t height, int64_t width, int64_t prefix, double scale) {
  check_inputs(q, k, v, zx, zy, height, width, prefix);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == at::kFloat,
              "sape2 lookup CPU kernel: grad_out must be a contiguous float32 tensor like out");
  const int64_t tokens = q.size(1), head_dims = q.size(2), value_dims = v.size(2);
  // delta_i = sum_n P_in dP_in = dO_i . O_i, the softmax backward's row term.
  const at::Tensor delta = (grad_out * out).sum(-1);
  at::Tensor grad_q = at::zeros_like(q), grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);
  at::Tensor grad_zx = at::zeros_like(zx), grad_zy = at::zeros_like(zy);
  const float fscale = static_cast<float>(scale);
  const std::vector<std::vector<Segment>> segments = tile_segments(tokens, prefix, width);

  at::parallel_for(0, q.size(0), 1, [&](int64_t begin, int64_t end) {
    TileBuffers buffers(2);
    float *probs = buffers.tiles[0], *grad_logits = buffers.tiles[1];
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t qk_offset = bh * tokens * head_dims, v_offset = bh * tokens * value_dims;
      const float *qh = q.data_ptr<float>() + qk_offset, *kh = k.data_ptr<float>() + qk_offset;
      const float* vh = v.data_ptr<float>() + v_offset;
      const float* doh = grad_out.data_ptr<float>() + v_offset;
      float *dq = grad_q.data_ptr<float>() + qk_offset, *dk = grad_k.data_ptr<float>() + qk_offset;
      float* dv = grad_v.data_ptr<float>() + v_offset;
      const float* zxh = zx.data_ptr<float>() + bh * zx.size(1) * width;
      const float* zyh = zy.data_ptr<float>() + bh * zy.size(1) * height;
      float* dzx = grad_zx.data_ptr<float>() + bh * zx.size(1) * width;
      float* dzy = grad_zy.data_ptr<float>() + bh * zy.size(1) * height;
      const float* lh = lse.data_ptr<float>() + bh * tokens;
      const float* delta_h = delta.data_ptr<float>() + bh * tokens;
      for (int64_t row0 = 0; row0 < tokens; row0 += kTile) {
        const int64_t rows = std::min(kTile, tokens - row0);
        const float* grad_out_rows = doh + row0 * value_dims;
        for (int64_t col0 = 0, tile = 0; col0 < tokens; col0 += kTile, ++tile) {
          const int64_t cols = std::min(kTile, tokens - col0);
          // Recompute the probabilities of the tile.
          gemm(false, true, rows, cols, head_dims, fscale, qh + row0 * head_dims, head_dims,
               kh + col0 * head_dims, head_dims, 0.f, probs, kTile);
          add_lookup_bias(zxh, zyh, height, width, prefix, row0, rows, segments[tile], probs);
          for (int64_t r = 0; r < rows; ++r) exp_shifted(probs + r * kTile, cols, lh[row0 + r]);
          // dV += P^T dO
          gemm(true, false, cols, value_dims, rows, 1.f, probs, kTile, grad_out_rows, value_dims,
               1.f, dv + col0 * value_dims, value_dims);
          // dP = dO V^T, then dS = P * (dP - delta) in place.
          gemm(false, true, rows, cols, value_dims, 1.f, grad_out_rows, value_dims,
               vh + col0 * value_dims, value_dims, 0.f, grad_logits, kTile);
          softmax_backward_tile(grad_logits, probs, rows, cols, delta_h + row0);
          // dQ += scale dS K, dK += scale dS^T Q
          gemm(false, false, rows, head_dims, cols, fscale, grad_logits, kTile,
               kh + col0 * head_dims, head_dims, 1.f, dq + row0 * head_dims, head_dims);
          gemm(true, false, cols, head_dims, rows, fscale, grad_logits, kTile,
               qh + row0 * head_dims, head_dims, 1.f, dk + col0 * head_dims, head_dims);
          reduce_lookup_grad(grad_logits, height, width, prefix, row0, rows, segments[tile], dzx,
                             dzy);
        }
      }
    }
  });
  return {grad_q, grad_k, grad_v, grad_zx, grad_zy};
}
