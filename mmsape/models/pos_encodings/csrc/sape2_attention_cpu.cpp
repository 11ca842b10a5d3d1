// Exact SaPE² attention on the CPU, fused and tiled (FlashAttention-2 style).
//
// For every (batch, head) b:
//
//   logits = scale * q k^T + sign * sum_a bias_a,
//   bias_a = root ? saferoot(qf_a kf_a^T, floor[b, a]) : qf_a kf_a^T,
//   out    = softmax(logits) v,
//
// where qf_a kf_a^T is the matmul form of the squared distances of the SaPE
// vectors along axis a (see squared_distance_factors in sape2.py) and
// saferoot(x, f) = x > f ? sqrt(x) : 0 (a norm's subgradient 0 at 0).
//
// The N x N logits never exist: queries are taken in tiles of kQueryTile rows
// and keys in tiles of kKeyTile columns; every product is one BLAS sgemm on a
// tile, and the element-wise work (roots, online softmax, softmax backward,
// chain rule into the distances) runs in one vectorised pass over the tile
// while it is in cache. Forward keeps the row-wise log-sum-exp; backward
// recomputes each tile's probabilities from it. Memory: a few tile buffers per
// thread plus O(N) per (batch, head). Threads split the (batch, head) pairs.
//
// Float32, contiguous (BH, N, C) tensors only; the Python wrapper
// (sape2_kernels.py) checks and falls back to its own kernel otherwise.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// BLAS single-precision GEMM (column-major); torch links one (MKL / OpenBLAS).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;
// Tile sizes: four 128 x 256 float buffers (512 KiB) stay in a core's L2.
// Measured on a 1 MiB-L2 AVX-512 CPU at 1024 and 4096 tokens, 64 x 256 and
// 256 x 512 tiles were as fast or up to 10% slower, 32 x 512 up to 40% slower.
constexpr int64_t kQueryTile = 128;
constexpr int64_t kKeyTile = 256;

// Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, with
// leading dimensions the row strides. A row-major matrix is its transpose in
// column-major order, so this is the column-major product C^T = op(B)^T op(A)^T.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = static_cast<int>(n), nn = static_cast<int>(m), kk = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  sgemm_(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

// Per-axis factor pointers of one (batch, head).
struct Factors {
  std::vector<const float*> query, key;
  std::vector<int64_t> width;
};

Factors factors_of(const std::vector<at::Tensor>& query_factors,
                   const std::vector<at::Tensor>& key_factors, int64_t bh) {
  Factors f;
  for (size_t a = 0; a < query_factors.size(); ++a) {
    const int64_t width = query_factors[a].size(2);
    const int64_t offset = bh * query_factors[a].size(1) * width;
    f.query.push_back(query_factors[a].data_ptr<float>() + offset);
    f.key.push_back(key_factors[a].data_ptr<float>() + offset);
    f.width.push_back(width);
  }
  return f;
}

// One tile of logits into `logits` (rows x cols, row stride kKeyTile). With
// `root`, distances[a] receives the axis' safe roots (kept for backward).
void tile_logits(const float* q, const float* k, int64_t head_dims, const Factors& f,
                 const float* floors, bool root, float sign, float scale, int64_t row0,
                 int64_t col0, int64_t rows, int64_t cols, float* logits,
                 std::vector<float*>& distances) {
  gemm(false, true, rows, cols, head_dims, scale, q + row0 * head_dims, head_dims,
       k + col0 * head_dims, head_dims, 0.f, logits, kKeyTile);
  const int64_t axes = static_cast<int64_t>(f.width.size());
  for (int64_t a = 0; a < axes; ++a) {
    const int64_t w = f.width[a];
    if (!root) {  // squared distances: accumulate straight into the logits
      gemm(false, true, rows, cols, w, sign, f.query[a] + row0 * w, w, f.key[a] + col0 * w, w,
           1.f, logits, kKeyTile);
      continue;
    }
    float* dist = distances[a];
    gemm(false, true, rows, cols, w, 1.f, f.query[a] + row0 * w, w, f.key[a] + col0 * w, w,
         0.f, dist, kKeyTile);
    const float floor = floors[a];
    const Vec vfloor(floor), vzero(0.f), vsign(sign);
    for (int64_t r = 0; r < rows; ++r) {
      float* d = dist + r * kKeyTile;
      float* s = logits + r * kKeyTile;
      int64_t c = 0;
      for (; c + Vec::size() <= cols; c += Vec::size()) {
        const Vec sq = Vec::loadu(d + c);
        // Entries at or below the rounding floor are exactly 0 (sqrt of a
        // clamped non-negative value avoids NaN from rounding below 0).
        const Vec rt = Vec::blendv(vzero, at::vec::maximum(sq, vzero).sqrt(), sq > vfloor);
        rt.store(d + c);
        at::vec::fmadd(vsign, rt, Vec::loadu(s + c)).store(s + c);
      }
      for (; c < cols; ++c) {
        const float rt = d[c] > floor ? std::sqrt(d[c]) : 0.f;
        d[c] = rt;
        s[c] += sign * rt;
      }
    }
  }
}

float row_max(const float* x, int64_t n) {
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(x + c));
  float result = vmax.reduce_max();
  for (; c < n; ++c) result = std::max(result, x[c]);
  return result;
}

// x <- exp(x - shift) in place; returns the sum of the results.
float exp_shifted(float* x, int64_t n, float shift) {
  const Vec vshift(shift);
  Vec vsum(0.f);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec e = (Vec::loadu(x + c) - vshift).exp_u20();
    e.store(x + c);
    vsum = vsum + e;
  }
  float sum = vsum.reduce_add();
  for (; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
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
  const int64_t axes = static_cast<int64_t>(query_factors.size());
  at::Tensor out = at::empty_like(v);
  at::Tensor lse = at::empty({heads, tokens}, q.options());
  const float fsign = static_cast<float>(sign), fscale = static_cast<float>(scale);

  at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = kQueryTile * kKeyTile;
    std::vector<float> buffer((1 + (root ? axes : 0)) * tile + kQueryTile * value_dims);
    float* logits = buffer.data();
    std::vector<float*> distances;
    for (int64_t a = 0; a < (root ? axes : 0); ++a) distances.push_back(logits + (1 + a) * tile);
    float* acc = logits + (1 + (root ? axes : 0)) * tile;
    float row_maxes[kQueryTile], row_sums[kQueryTile];

    for (int64_t bh = begin; bh < end; ++bh) {
      const float* qh = q.data_ptr<float>() + bh * tokens * head_dims;
      const float* kh = k.data_ptr<float>() + bh * tokens * head_dims;
      const float* vh = v.data_ptr<float>() + bh * tokens * value_dims;
      float* oh = out.data_ptr<float>() + bh * tokens * value_dims;
      float* lh = lse.data_ptr<float>() + bh * tokens;
      const Factors f = factors_of(query_factors, key_factors, bh);
      const float* fl = root ? floors.data_ptr<float>() + bh * axes : nullptr;

      for (int64_t row0 = 0; row0 < tokens; row0 += kQueryTile) {
        const int64_t rows = std::min(kQueryTile, tokens - row0);
        std::fill(acc, acc + rows * value_dims, 0.f);
        std::fill(row_maxes, row_maxes + rows, -std::numeric_limits<float>::infinity());
        std::fill(row_sums, row_sums + rows, 0.f);
        for (int64_t col0 = 0; col0 < tokens; col0 += kKeyTile) {
          const int64_t cols = std::min(kKeyTile, tokens - col0);
          tile_logits(qh, kh, head_dims, f, fl, root, fsign, fscale, row0, col0, rows, cols,
                      logits, distances);
          // Online softmax: rescale what was accumulated to the new row maximum.
          for (int64_t r = 0; r < rows; ++r) {
            float* s = logits + r * kKeyTile;
            const float new_max = std::max(row_maxes[r], row_max(s, cols));
            const float rescale = std::exp(row_maxes[r] - new_max);  // 0 on the first tile
            row_sums[r] = row_sums[r] * rescale + exp_shifted(s, cols, new_max);
            row_maxes[r] = new_max;
            if (col0 > 0) {
              float* accr = acc + r * value_dims;
              for (int64_t c = 0; c < value_dims; ++c) accr[c] *= rescale;
            }
          }
          gemm(false, false, rows, value_dims, cols, 1.f, logits, kKeyTile, vh + col0 * value_dims,
               value_dims, 1.f, acc, value_dims);
        }
        for (int64_t r = 0; r < rows; ++r) {
          const float inv = 1.f / row_sums[r];
          const float* accr = acc + r * value_dims;
          float* outr = oh + (row0 + r) * value_dims;
          for (int64_t c = 0; c < value_dims; ++c) outr[c] = accr[c] * inv;
          lh[row0 + r] = row_maxes[r] + std::log(row_sums[r]);
        }
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
  const int64_t heads = q.size(0), tokens = q.size(1), head_dims = q.size(2),
                value_dims = v.size(2);
  const int64_t axes = static_cast<int64_t>(query_factors.size());
  // delta_i = sum_n P_in dP_in = dO_i . O_i, the softmax backward's row term.
  const at::Tensor delta = (grad_out * out).sum(-1);
  at::Tensor grad_q = at::zeros_like(q), grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);
  std::vector<at::Tensor> grad_qf, grad_kf;
  for (int64_t a = 0; a < axes; ++a) {
    grad_qf.push_back(at::zeros_like(query_factors[a]));
    grad_kf.push_back(at::zeros_like(key_factors[a]));
  }
  const float fsign = static_cast<float>(sign), fscale = static_cast<float>(scale);
  // d bias / d sq = 0.5 / root for the roots, 1 for squared distances.
  const float factor_scale = root ? 0.5f * fsign : fsign;

  at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = kQueryTile * kKeyTile;
    const int64_t num_distances = root ? axes : 0;
    std::vector<float> buffer((2 + num_distances) * tile);
    float* probs = buffer.data();
    float* grad_logits = probs + tile;
    std::vector<float*> distances;
    for (int64_t a = 0; a < num_distances; ++a) distances.push_back(probs + (2 + a) * tile);

    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t qk_offset = bh * tokens * head_dims, v_offset = bh * tokens * value_dims;
      const float* qh = q.data_ptr<float>() + qk_offset;
      const float* kh = k.data_ptr<float>() + qk_offset;
      const float* vh = v.data_ptr<float>() + v_offset;
      const float* doh = grad_out.data_ptr<float>() + v_offset;
      const float* lh = lse.data_ptr<float>() + bh * tokens;
      const float* dh = delta.data_ptr<float>() + bh * tokens;
      float* dqh = grad_q.data_ptr<float>() + qk_offset;
      float* dkh = grad_k.data_ptr<float>() + qk_offset;
      float* dvh = grad_v.data_ptr<float>() + v_offset;
      const Factors f = factors_of(query_factors, key_factors, bh);
      Factors df = factors_of(grad_qf, grad_kf, bh);
      const float* fl = root ? floors.data_ptr<float>() + bh * axes : nullptr;

      for (int64_t row0 = 0; row0 < tokens; row0 += kQueryTile) {
        const int64_t rows = std::min(kQueryTile, tokens - row0);
        for (int64_t col0 = 0; col0 < tokens; col0 += kKeyTile) {
          const int64_t cols = std::min(kKeyTile, tokens - col0);
          tile_logits(qh, kh, head_dims, f, fl, root, fsign, fscale, row0, col0, rows, cols,
                      probs, distances);
          for (int64_t r = 0; r < rows; ++r) exp_shifted(probs + r * kKeyTile, cols, lh[row0 + r]);
          // dV += P^T dO
          gemm(true, false, cols, value_dims, rows, 1.f, probs, kKeyTile, doh + row0 * value_dims,
               value_dims, 1.f, dvh + col0 * value_dims, value_dims);
          // dP = dO V^T, then dS = P * (dP - delta) in place.
          gemm(false, true, rows, cols, value_dims, 1.f, doh + row0 * value_dims, value_dims,
               vh + col0 * value_dims, value_dims, 0.f, grad_logits, kKeyTile);
          for (int64_t r = 0; r < rows; ++r) {
            float* g = grad_logits + r * kKeyTile;
            const float* p = probs + r * kKeyTile;
            const Vec vdelta(dh[row0 + r]);
            int64_t c = 0;
            for (; c + Vec::size() <= cols; c += Vec::size()) {
              ((Vec::loadu(g + c) - vdelta) * Vec::loadu(p + c)).store(g + c);
            }
            for (; c < cols; ++c) g[c] = (g[c] - dh[row0 + r]) * p[c];
          }
          // dQ += scale dS K, dK += scale dS^T Q
          gemm(false, false, rows, head_dims, cols, fscale, grad_logits, kKeyTile,
               kh + col0 * head_dims, head_dims, 1.f, dqh + row0 * head_dims, head_dims);
          gemm(true, false, cols, head_dims, rows, fscale, grad_logits, kKeyTile,
               qh + row0 * head_dims, head_dims, 1.f, dkh + col0 * head_dims, head_dims);
          for (int64_t a = 0; a < axes; ++a) {
            const int64_t w = f.width[a];
            const float* g = grad_logits;
            if (root) {
              // dS / root where root > 0, else 0 (the norm's subgradient at 0).
              float* d = distances[a];
              const Vec vzero(0.f);
              for (int64_t r = 0; r < rows; ++r) {
                float* dr = d + r * kKeyTile;
                const float* gr = grad_logits + r * kKeyTile;
                int64_t c = 0;
                for (; c + Vec::size() <= cols; c += Vec::size()) {
                  const Vec rt = Vec::loadu(dr + c);
                  Vec::blendv(vzero, Vec::loadu(gr + c) / rt, rt > vzero).store(dr + c);
                }
                for (; c < cols; ++c) dr[c] = dr[c] > 0.f ? gr[c] / dr[c] : 0.f;
              }
              g = d;
            }
            // d qf += G kf, d kf += G^T qf (times the chain factor)
            gemm(false, false, rows, w, cols, factor_scale, g, kKeyTile, f.key[a] + col0 * w, w,
                 1.f, const_cast<float*>(df.query[a]) + row0 * w, w);
            gemm(true, false, cols, w, rows, factor_scale, g, kKeyTile, f.query[a] + row0 * w, w,
                 1.f, const_cast<float*>(df.key[a]) + col0 * w, w);
          }
        }
      }
    }
  });
  std::vector<at::Tensor> grads = {grad_q, grad_k, grad_v};
  grads.insert(grads.end(), grad_qf.begin(), grad_qf.end());
  grads.insert(grads.end(), grad_kf.begin(), grad_kf.end());
  return grads;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &sape2_attention_forward, "Exact SaPE² attention, forward (CPU, float32)");
  m.def("backward", &sape2_attention_backward, "Exact SaPE² attention, backward (CPU, float32)");
}
