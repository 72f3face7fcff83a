//===- embedding.cpp - embedding_fwd --------------------------------------===//
#include <cstring>

#include "runtime/comm/comm.h"
#include "runtime/cpu/common.h"
#include "runtime/cpu/kernels_impl.h"

namespace parallora::rt::cpu::impl {

using detail::Check;

// ids (B,T) i32, table (V,D) -> y (B,T,D). An id outside [0, V) is an error naming the id and
// its position; it is detected before anything is written.
// With attr vocab_group (tensor-parallel vocabulary): table holds rows [c*V, (c+1)*V) of the
// whole table (c = this rank's index in the group, g its size); ids of other shards give zero
// rows (y is a partial sum the plan all-reduces) and ids outside [0, V*g) are errors.
Status embedding_fwd(KernelCall &c) {
  Check ck(c, "embedding_fwd");
  EmbeddingArgs ea;  // shapes, and this table's first row and the whole vocabulary's size
  if (!parse_embedding_args(c, ck, /*bf16_ok=*/false, &ea)) return ck.status();
  const Tensor &ids = c.in[0], &table = c.in[1], &y = c.out[0];
  const int64_t B = ea.B, T = ea.T, V = ea.V, D = ea.D;
  const int64_t lo = ea.vocab.lo, vocab = ea.vocab.vocab;

  const int32_t *id = ids.i32();
  const int64_t n = B * T;
  for (int64_t i = 0; i < n; ++i) {
    if (id[i] < 0 || id[i] >= vocab)
      return ck.error("token id " + std::to_string(id[i]) + " at position (b=" +
                      std::to_string(i / T) + ", t=" + std::to_string(i % T) +
                      ") is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  const float *tab = table.f32();
  float *out = y.f32();
#pragma omp parallel for schedule(static) if (n * D >= detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = int64_t(id[i]) - lo;
    if (row >= 0 && row < V)
      std::memcpy(out + i * D, tab + row * D, size_t(D) * sizeof(float));
    else
      std::memset(out + i * D, 0, size_t(D) * sizeof(float));
  }
  return Status::ok();
}

} // namespace parallora::rt::cpu::impl
