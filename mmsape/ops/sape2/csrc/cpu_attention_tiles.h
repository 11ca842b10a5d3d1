// Building blocks shared by the tiled CPU attention kernels of SaPE²
// (sape2_attention_cpu.cpp: the distance bias; sape2_lookup_attention_cpu.cpp:
// the lookup bias): BLAS GEMMs on row-major tiles, the vectorised row passes of
// the online softmax, and per-thread tile buffers.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

// BLAS single-precision GEMM (column-major); torch links one (MKL / OpenBLAS).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace sape2_cpu {

using Vec = at::vec::Vectorized<float>;
// Tile size: the eight 128 x 128 float buffers of the distance kernel's
// backward (512 KiB) stay in a core's L2 cache (1 MiB on the machine this was
// tuned on).
constexpr int64_t kTile = 128;

// Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, with
// leading dimensions the row strides. A row-major matrix is its transpose in
// column-major order, so this is the column-major product C^T = op(B)^T op(A)^T.
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = static_cast<int>(n), nn = static_cast<int>(m), kk = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  sgemm_(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

inline float row_max(const float* x, int64_t n) {
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(x + c));
  float result = vmax.reduce_max();
  for (; c < n; ++c) result = std::max(result, x[c]);
  return result;
}

// x <- exp(x - shift) in place; returns the sum of the results.
inline float exp_shifted(float* x, int64_t n, float shift) {
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

// One online-softmax step over a logits tile (row stride kTile) whose rows
// continue earlier tiles: turns the logits into exp(logit - new row max),
// rescales the running row sums and the accumulated output rows (value_dims
// wide) to the new maxima.
inline void online_softmax_tile(float* logits, int64_t rows, int64_t cols, float* row_maxes,
                                float* row_sums, float* out, int64_t value_dims) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * kTile;
    const float new_max = std::max(row_maxes[r], row_max(row, cols));
    const float rescale = std::exp(row_maxes[r] - new_max);  // 0 on the first visit
    row_sums[r] = row_sums[r] * rescale + exp_shifted(row, cols, new_max);
    row_maxes[r] = new_max;
    if (rescale != 1.f) {
      float* out_row = out + r * value_dims;
      for (int64_t c = 0; c < value_dims; ++c) out_row[c] *= rescale;
    }
  }
}

// Softmax backward in place: g <- p * (g - delta_r) per row, with the row term
// delta_r = dO_r . O_r.
inline void softmax_backward_tile(float* grad, const float* probs, int64_t rows, int64_t cols,
                                  const float* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    float* g = grad + r * kTile;
    const float* p = probs + r * kTile;
    const Vec vdelta(delta[r]);
    int64_t c = 0;
    for (; c + Vec::size() <= cols; c += Vec::size()) {
      ((Vec::loadu(g + c) - vdelta) * Vec::loadu(p + c)).store(g + c);
    }
    for (; c < cols; ++c) g[c] = (g[c] - delta[r]) * p[c];
  }
}

// Tile buffers of one thread, kTile x kTile each.
struct TileBuffers {
  std::vector<float> storage;
  std::vector<float*> tiles;
  explicit TileBuffers(int64_t count) : storage(count * kTile * kTile) {
    for (int64_t i = 0; i < count; ++i) tiles.push_back(storage.data() + i * kTile * kTile);
  }
};

}  // namespace sape2_cpu
