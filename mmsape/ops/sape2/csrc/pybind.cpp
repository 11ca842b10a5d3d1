// Python bindings of the compiled SaPE² CPU kernels (one extension module).
#include <torch/extension.h>

#include <vector>

std::vector<at::Tensor> sape2_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v,
                                                const std::vector<at::Tensor>& query_factors,
                                                const std::vector<at::Tensor>& key_factors,
                                                const at::Tensor& floors, bool root, double sign,
                                                double scale);
std::vector<at::Tensor> sape2_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::vector<at::Tensor>& query_factors,
    const std::vector<at::Tensor>& key_factors, const at::Tensor& floors, bool root,
    double sign, double scale);
std::vector<at::Tensor> sape2_lookup_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, const at::Tensor& zx,
                                                       const at::Tensor& zy, int64_t height,
                                                       int64_t width, int64_t prefix,
                                                       double scale);
std::vector<at::Tensor> sape2_lookup_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& zx, const at::Tensor& zy,
    int64_t height, int64_t width, int64_t prefix, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &sape2_attention_forward, "Exact SaPE² attention, forward (CPU, float32)");
  m.def("backward", &sape2_attention_backward, "Exact SaPE² attention, backward (CPU, float32)");
  m.def("lookup_forward", &sape2_lookup_attention_forward,
        "Query-relative SaPE² attention with the lookup bias, forward (CPU, float32)");
  m.def("lookup_backward", &sape2_lookup_attention_backward,
        "Query-relative SaPE² attention with the lookup bias, backward (CPU, float32)");
}
