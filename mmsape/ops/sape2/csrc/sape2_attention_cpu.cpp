// Exact SaPE² attention on the CPU, fused and tiled (FlashAttention-2 style).
//
// For every (batch, head) b:
//
//   logits = scale * q k^T + sign * sum_a bias_a,
//   bias_a = root ? saferoot(qf_a kf_a^T, floor[b, a]) : qf_a kf_a^T,
//   out    = softmax(logits) v,
//
// where qf_a kf_a^T is the matmul form of the squared distances of the SaPE
// vectors along axis a (see squared_distance_factors in functional.py) and
// saferoot(x, f) = x > f ? sqrt(x) : 0 (a norm's subgradient 0 at 0).
//
// The N x N logits never exist: tokens are taken in square tiles of kTile, and
// every product is one BLAS sgemm on a tile; the element-wise work (roots,
// online softmax, softmax backward, chain rule into the distances) runs in one
// vectorised pass over a tile while it is in cache. Forward keeps the row-wise
// log-sum-exp; backward recomputes each tile's probabilities from it.
//
// Distances are symmetric, so the distance part of the logits (the most
// expensive: one GEMM of width L_a + 2 and one root per axis) is computed once
// per pair of tiles (I, J), J >= I, and used for both (I, J) and, transposed,
// (J, I). This needs factors of the form squared_distance_factors builds
// (qf_i . kf_n = qf_n . kf_i); the Python wrapper guarantees it.
//
// Memory: a few tile buffers per thread plus O(N) per (batch, head). Threads
// split the (batch, head) pairs. Float32, contiguous (BH, N, C) tensors only;
// the Python dispatcher (sape2_block_attention in block_attention.py) checks
// and falls back to its own kernel otherwise.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "cpu_attention_tiles.h"

namespace {

using namespace sape2_cpu;

// One (batch, head) of q, k, v and the per-axis factors (or of their gradients).
struct Head {
  float *q, *k, *v;
  int64_t head_dims, value_dims;
  std::vector<float*> query_factors, key_factors;
  std::vector<int64_t> widths;
  const float* floors;  // per axis; null for squared distances
};

Head head_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const std::vector<at::Tensor>& query_factors,
             const std::vector<at::Tensor>& key_factors, const at::Tensor& floors, bool root,
             int64_t bh) {
  const int64_t tokens = q.size(1);
  Head h{q.data_ptr<float>() + bh * tokens * q.size(2), k.data_ptr<float>() + bh * tokens * k.size(2),
         v.data_ptr<float>() + bh * tokens * v.size(2), q.size(2), v.size(2), {}, {}, {},
         root ? floors.data_ptr<float>() + bh * floors.size(1) : nullptr};
  for (size_t a = 0; a < query_factors.size(); ++a) {
    const int64_t width = query_factors[a].size(2);
    h.query_factors.push_back(query_factors[a].data_ptr<float>() + bh * tokens * width);
    h.key_factors.push_back(key_factors[a].data_ptr<float>() + bh * tokens * width);
    h.widths.push_back(width);
  }
  return h;
}

// The bias tile of rows [row0, row0 + rows) and columns [col0, col0 + cols):
// bias = sign * sum_a D_a. With floors (roots), distances[a] receives D_a,
// which backward needs; squared distances are summed straight into the bias.
void bias_tile(const Head& h, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
               float sign, const std::vector<float*>& distances, float* bias) {
  const size_t axes = h.widths.size();
  for (size_t a = 0; a < axes; ++a) {
    const int64_t w = h.widths[a];
    const float* qf = h.query_factors[a] + row0 * w;
    const float* kf = h.key_factors[a] + col0 * w;
    if (h.floors == nullptr) {
      gemm(false, true, rows, cols, w, sign, qf, w, kf, w, a == 0 ? 0.f : 1.f, bias, kTile);
      continue;
    }
    float* dist = distances[a];
    gemm(false, true, rows, cols, w, 1.f, qf, w, kf, w, 0.f, dist, kTile);
    const float floor = h.floors[a];
    const Vec vfloor(floor), vzero(0.f), vsign(sign);
    const bool first = a == 0;
    for (int64_t r = 0; r < rows; ++r) {
      float* d = dist + r * kTile;
      float* b = bias + r * kTile;
      int64_t c = 0;
      for (; c + Vec::size() <= cols; c += Vec::size()) {
        const Vec sq = Vec::loadu(d + c);
        // At or below the rounding floor: exactly 0 (the max keeps the root of
        // a rounding-negative value, which blendv drops, from being NaN).
        const Vec root = Vec::blendv(vzero, at::vec::maximum(sq, vzero).sqrt(), sq > vfloor);
        root.store(d + c);
        (first ? vsign * root : at::vec::fmadd(vsign, root, Vec::loadu(b + c))).store(b + c);
      }
      for (; c < cols; ++c) {
        const float root = d[c] > floor ? std::sqrt(d[c]) : 0.f;
        d[c] = root;
        b[c] = first ? sign * root : b[c] + sign * root;
      }
    }
  }
}

// dst (cols x rows) = src^T (rows x cols); both with row stride kTile.
void transpose_tile(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * kTile + r] = src[r * kTile + c];
      }
    }
  }
}

// Visits the tile pairs (I, J), J >= I. For each, `prepare(I, J)` computes the
// pair's tiles in the (I, J) orientation into the given buffers; `visit` then
// runs on (I, J) and, with the buffers transposed, on (J, I).
template <typename Prepare, typename Visit>
void for_each_tile_pair(int64_t tokens, const std::vector<float*>& buffers,
                        const std::vector<float*>& transposed, Prepare prepare, Visit visit) {
  for (int64_t row0 = 0; row0 < tokens; row0 += kTile) {
    const int64_t rows = std::min(kTile, tokens - row0);
    for (int64_t col0 = row0; col0 < tokens; col0 += kTile) {
      const int64_t cols = std::min(kTile, tokens - col0);
      prepare(row0, rows, col0, cols);
      if (col0 != row0) {
        for (size_t i = 0; i < buffers.size(); ++i) transpose_tile(buffers[i], rows, cols, transposed[i]);
      }
      visit(row0, rows, col0, cols, buffers);
      if (col0 != row0) visit(col0, cols, row0, rows, transposed);
    }
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::vector<at::Tensor>& query_factors,
                  const std::vector<at::Tensor>& key_factors, const at::Tensor& floors,
                  bool root) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->dim() == 3 && t->is_contiguous() && t->scalar_type() == at::kFloat &&
                    t->device().is_cpu(),
                "sape2 CPU kernel: q, k, v must be contiguous float32 (BH, N, C) CPU tensors");
  }
  TORCH_CHECK(k.sizes() == q.sizes() && v.size(0) == q.size(0) && v.size(1) == q.size(1),
              "sape2 CPU kernel: q, k, v shapes disagree");
  TORCH_CHECK(!query_factors.empty() && query_factors.size() == key_factors.size(),
              "sape2 CPU kernel: need one query and one key factor per axis");
  for (size_t a = 0; a < query_factors.size(); ++a) {
    for (const at::Tensor* t : {&query_factors[a], &key_factors[a]}) {
      TORCH_CHECK(t->dim() == 3 && t->is_contiguous() && t->scalar_type() == at::kFloat &&
                      t->size(0) == q.size(0) && t->size(1) == q.size(1) &&
                      t->size(2) == query_factors[a].size(2),
                  "sape2 CPU kernel: factors must be contiguous float32 (BH, N, L) tensors");
    }
  }
  if (root) {
    TORCH_CHECK(floors.dim() == 2 && floors.is_contiguous() &&
                    floors.scalar_type() == at::kFloat && floors.size(0) == q.size(0) &&
                    floors.size(1) == static_cast<int64_t>(query_factors.size()),
                "sape2 CPU kernel: floors must be contiguous float32 (BH, axes)");
  }
}

}  // namespace

// Returns {out (BH, N, dv), lse (BH, N)}.
std::vector<at::Tensor> sape2_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v,
                                                const std::vector<at::Tensor>& query_factors,
                                                const std::vector<at::Tensor>& key_factors,
                                                const at::Tensor& floors, bool root, double sign,
                                                double scale) {
  check_inputs(q, k, v, query_factors, key_factors, floors, root);
  const int64_t heads = q.size(0), tokens = q.size(1), head_dims = q.size(2),
                value_dims = v.size(2);
  const int64_t num_distances = root ? static_cast<int64_t>(query_factors.size()) : 0;
  // Unnormalised output rows accumulate in `out`; divided by the row sums at the end.
  at::Tensor out = at::zeros_like(v);
  at::Tensor lse = at::empty({heads, tokens}, q.options());
  const float fsign = static_cast<float>(sign), fscale = static_cast<float>(scale);

  at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
    // [bias, bias transposed, distances...]
    TileBuffers buffers(2 + num_distances);
    const std::vector<float*> bias = {buffers.tiles[0]}, bias_t = {buffers.tiles[1]};
    const std::vector<float*> distances(buffers.tiles.begin() + 2, buffers.tiles.end());
    std::vector<float> row_maxes(tokens), row_sums(tokens);

    for (int64_t bh = begin; bh < end; ++bh) {
      const Head h = head_of(q, k, v, query_factors, key_factors, floors, root, bh);
      float* oh = out.data_ptr<float>() + bh * tokens * value_dims;
      std::fill(row_maxes.begin(), row_maxes.end(), -std::numeric_limits<float>::infinity());
      std::fill(row_sums.begin(), row_sums.end(), 0.f);
      auto prepare = [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
        bias_tile(h, row0, rows, col0, cols, fsign, distances, bias[0]);
      };
      auto visit = [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                       const std::vector<float*>& tiles) {
        float* logits = tiles[0];  // the bias tile becomes the logits, then the weights
        gemm(false, true, rows, cols, head_dims, fscale, h.q + row0 * head_dims, head_dims,
             h.k + col0 * head_dims, head_dims, 1.f, logits, kTile);
        // Online softmax: rescale what was accumulated to the new row maximum.
        online_softmax_tile(logits, rows, cols, row_maxes.data() + row0, row_sums.data() + row0,
                            oh + row0 * value_dims, value_dims);
        gemm(false, false, rows, value_dims, cols, 1.f, logits, kTile, h.v + col0 * value_dims,
             value_dims, 1.f, oh + row0 * value_dims, value_dims);
      };
      for_each_tile_pair(tokens, bias, bias_t, prepare, visit);
      float* lh = lse.data_ptr<float>() + bh * tokens;
      for (int64_t r = 0; r < tokens; ++r) {
        const float inverse_sum = 1.f / row_sums[r];
        float* out_row = oh + r * value_dims;
        for (int64_t c = 0; c < value_dims; ++c) out_row[c] *= inverse_sum;
        lh[r] = row_maxes[r] + std::log(row_sums[r]);
      }
    }
  });
  return {out, lse};
}

// Returns {grad_q, grad_k, grad_v, grad_query_factors..., grad_key_factors...}.
std::vector<at::Tensor> sape2_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::vector<at::Tensor>& query_factors,
    const std::vector<at::Tensor>& key_factors, const at::Tensor& floors, bool root,
    double sign, double scale) {
  check_inputs(q, k, v, query_factors, key_factors, floors, root);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == at::kFloat,
              "sape2 CPU kernel: grad_out must be a contiguous float32 tensor like out");
  const int64_t tokens = q.size(1), head_dims = q.size(2), value_dims = v.size(2);
  const int64_t axes = static_cast<int64_t>(query_factors.size());
  const int64_t num_distances = root ? axes : 0;
  // delta_i = sum_n P_in dP_in = dO_i . O_i, the softmax backward's row term.
  const at::Tensor delta = (grad_out * out).sum(-1);
  at::Tensor grad_q = at::zeros_like(q), grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);
  std::vector<at::Tensor> grad_qf, grad_kf;
  for (int64_t a = 0; a < axes; ++a) {
    grad_qf.push_back(at::zeros_like(query_factors[a]));
    grad_kf.push_back(at::zeros_like(key_factors[a]));
  }
  const float fsign = static_cast<float>(sign), fscale = static_cast<float>(scale);
  // d bias / d sq = sign * 0.5 / root for roots (the 1 / root is applied per
  // entry), sign for squared distances.
  const float factor_scale = root ? 0.5f * fsign : fsign;

  at::parallel_for(0, q.size(0), 1, [&](int64_t begin, int64_t end) {
    // [bias, distances...], the same transposed, and dP / dS.
    TileBuffers buffers(2 * (1 + num_distances) + 1);
    const std::vector<float*> tiles(buffers.tiles.begin(), buffers.tiles.begin() + 1 + num_distances);
    const std::vector<float*> tiles_t(buffers.tiles.begin() + 1 + num_distances,
                                      buffers.tiles.end() - 1);
    const std::vector<float*> distances(tiles.begin() + 1, tiles.end());
    float* grad_logits = buffers.tiles.back();

    for (int64_t bh = begin; bh < end; ++bh) {
      const Head h = head_of(q, k, v, query_factors, key_factors, floors, root, bh);
      const Head dh = head_of(grad_q, grad_k, grad_v, grad_qf, grad_kf, floors, false, bh);
      float *dq = dh.q, *dk = dh.k, *dv = dh.v;
      const float* doh = grad_out.data_ptr<float>() + bh * tokens * value_dims;
      const float* lh = lse.data_ptr<float>() + bh * tokens;
      const float* delta_h = delta.data_ptr<float>() + bh * tokens;
      auto prepare = [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
        bias_tile(h, row0, rows, col0, cols, fsign, distances, tiles[0]);
      };
      auto visit = [&](int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                       const std::vector<float*>& pair_tiles) {
        float* probs = pair_tiles[0];  // bias -> logits -> probabilities
        gemm(false, true, rows, cols, head_dims, fscale, h.q + row0 * head_dims, head_dims,
             h.k + col0 * head_dims, head_dims, 1.f, probs, kTile);
        for (int64_t r = 0; r < rows; ++r) exp_shifted(probs + r * kTile, cols, lh[row0 + r]);
        const float* grad_out_rows = doh + row0 * value_dims;
        // dV += P^T dO
        gemm(true, false, cols, value_dims, rows, 1.f, probs, kTile, grad_out_rows, value_dims,
             1.f, dv + col0 * value_dims, value_dims);
        // dP = dO V^T, then dS = P * (dP - delta) in place.
        gemm(false, true, rows, cols, value_dims, 1.f, grad_out_rows, value_dims,
             h.v + col0 * value_dims, value_dims, 0.f, grad_logits, kTile);
        softmax_backward_tile(grad_logits, probs, rows, cols, delta_h + row0);
        // dQ += scale dS K, dK += scale dS^T Q
        gemm(false, false, rows, head_dims, cols, fscale, grad_logits, kTile,
             h.k + col0 * head_dims, head_dims, 1.f, dq + row0 * head_dims, head_dims);
        gemm(true, false, cols, head_dims, rows, fscale, grad_logits, kTile,
             h.q + row0 * head_dims, head_dims, 1.f, dk + col0 * head_dims, head_dims);
        for (int64_t a = 0; a < axes; ++a) {
          const int64_t w = h.widths[a];
          const float* g = grad_logits;
          if (root) {
            // dS / root where root > 0, else 0 (the norm's subgradient at 0).
            float* d = pair_tiles[1 + a];
            const Vec vzero(0.f);
            for (int64_t r = 0; r < rows; ++r) {
              float* dr = d + r * kTile;
              const float* gr = grad_logits + r * kTile;
              int64_t c = 0;
              for (; c + Vec::size() <= cols; c += Vec::size()) {
                const Vec root_values = Vec::loadu(dr + c);
                Vec::blendv(vzero, Vec::loadu(gr + c) / root_values, root_values > vzero)
                    .store(dr + c);
              }
              for (; c < cols; ++c) dr[c] = dr[c] > 0.f ? gr[c] / dr[c] : 0.f;
            }
            g = d;
          }
          // d qf += G kf, d kf += G^T qf (times the chain factor)
          gemm(false, false, rows, w, cols, factor_scale, g, kTile, h.key_factors[a] + col0 * w,
               w, 1.f, dh.query_factors[a] + row0 * w, w);
          gemm(true, false, cols, w, rows, factor_scale, g, kTile, h.query_factors[a] + row0 * w,
               w, 1.f, dh.key_factors[a] + col0 * w, w);
        }
      };
      for_each_tile_pair(tokens, tiles, tiles_t, prepare, visit);
    }
  });
  std::vector<at::Tensor> grads = {grad_q, grad_k, grad_v};
  grads.insert(grads.end(), grad_qf.begin(), grad_qf.end());
  grads.insert(grads.end(), grad_kf.begin(), grad_kf.end());
  return grads;
}
