//===- collective_kernels.cpp - all_reduce, send, recv kernels --------------===//
//
// Contract: runtime/cpu/kernels.h, "PARALLEL PLANS". They reduce / move data through
// KernelCall::comm; errors read "<kernel> (<loc>): <message>" like the CPU kernels'.
//
//===----------------------------------------------------------------------===//
#include <cstring>
#include <vector>

#include "runtime/base/bf16.h"
#include "runtime/comm/comm.h"

namespace parallora::rt {

namespace {

constexpr auto fail = collective_error;

bool is_movable(const Tensor &t) {  // send/recv move the bytes of any element type
  return t.dtype == plan::ElemType::F32 || t.dtype == plan::ElemType::I32 || t.dtype == plan::ElemType::BF16;
}


// y_i = scale * sum over the group of x_i, all x_i reduced as one message. The tensors are all
// f32 or all bf16 (tensor-parallel activations of a --precision bf16 plan); bf16 is reduced as
// bf16 (Communicator::all_reduce) and scaled in f32 with one rounding.
Status all_reduce_kernel(KernelCall &c) {
  const char *K = "all_reduce";
  std::string group;
  int g = 1;
  plan::ElemType dtype = plan::ElemType::F32;
  int64_t total = 0;
  if (Status s = collective_all_reduce_operands(c, K, &group, &g, &dtype, &total); !s) return s;
  const double scale = c.attr_f("scale", 1.0);
  const int64_t es = plan::elem_size(dtype);
  const float sf = float(scale);
  const bool scaled = scale != 1.0;
  auto finish = [&](const void *sum, void *y, int64_t n) {
    if (scaled && dtype == plan::ElemType::BF16) {
      const uint16_t *a = static_cast<const uint16_t *>(sum);
      uint16_t *b = static_cast<uint16_t *>(y);
      for (int64_t j = 0; j < n; ++j) b[j] = f32_to_bf16(sf * bf16_to_f32(a[j]));
    } else if (scaled) {
      const float *a = static_cast<const float *>(sum);
      float *b = static_cast<float *>(y);
      for (int64_t j = 0; j < n; ++j) b[j] = sf * a[j];
    } else if (sum != y) {
      std::memcpy(y, sum, size_t(n * es));
    }
  };
  if (c.in.size() == 1) {
    // One tensor: reduce in y directly.
    void *y = c.out[0].data;
    const int64_t n = c.in[0].numel();
    if (y != c.in[0].data) std::memmove(y, c.in[0].data, size_t(n * es));
    if (c.comm && g > 1)
      if (Status s = c.comm->all_reduce(group, y, n, dtype, ReduceOp::Sum); !s) return fail(c, K, s.message());
    finish(y, y, n);
    return Status::ok();
  }
  // A bucket: pack, one reduction, unpack.
  thread_local std::vector<char> staging;
  staging.resize(size_t(total * es));
  int64_t off = 0;
  for (const Tensor &x : c.in) {
    std::memcpy(staging.data() + off, x.data, size_t(x.nbytes()));
    off += x.nbytes();
  }
  if (c.comm && g > 1 && total > 0)
    if (Status s = c.comm->all_reduce(group, staging.data(), total, dtype, ReduceOp::Sum); !s)
      return fail(c, K, s.message());
  off = 0;
  for (size_t i = 0; i < c.out.size(); ++i) {
    finish(staging.data() + off, c.out[i].data, c.out[i].numel());
    off += c.out[i].nbytes();
  }
  return Status::ok();
}

/// The bucket number of an all_reduce_start / all_reduce_wait (its Communicator handle).

// Overlapped gradient bucket (the compiler's overlap of the data-parallel gradient sync with the
// backward): all_reduce_start packs x_0..x_{n-1} into the communicator's staging for `bucket`
// and starts the sum over `group`; it runs where the backward has produced the bucket's last
// gradient, and only on the optimizer step's last micro-batch (StepState::last_micro; with no
// StepState it starts). all_reduce_wait, at the bucket's place in optimizer_step, completes it
// and writes scale * sum into y_i; when no start happened it does the whole all_reduce itself,
// so the result is the same either way.
Status all_reduce_start_kernel(KernelCall &c) {
  const char *K = "all_reduce_start";
  if (c.step && !c.step->last_micro) return Status::ok();
  int handle = -1;
  if (Status s = collective_bucket(c, K, &handle); !s) return s;
  std::string group;
  int g = 1;
  if (Status s = collective_group(c, K, &group, &g); !s) return s;
  if (!c.out.empty()) return fail(c, K, "expected no outputs (the sum is written by all_reduce_wait)");
  plan::ElemType dtype = plan::ElemType::F32;
  int64_t total = 0, bytes = 0;
  if (Status s = collective_bucket_inputs(c, K, &dtype, &total, &bytes); !s) return s;
  std::vector<char> &staging = c.comm->staging(handle);
  staging.resize(size_t(bytes));
  int64_t off = 0;
  for (const Tensor &x : c.in) {
    std::memcpy(staging.data() + off, x.data, size_t(x.nbytes()));
    off += x.nbytes();
  }
  if (Status s = c.comm->all_reduce_start(handle, group, staging.data(), total, dtype, ReduceOp::Sum);
      !s)
    return fail(c, K, s.message());
  return Status::ok();
}

Status all_reduce_wait_kernel(KernelCall &c) {
  const char *K = "all_reduce_wait";
  int handle = -1;
  if (Status s = collective_bucket(c, K, &handle); !s) return s;
  if (!c.comm->started(handle)) return all_reduce_kernel(c);  // never started: reduce here
  if (Status s = collective_pairs(c, K); !s) return s;
  if (Status s = c.comm->all_reduce_wait(handle); !s) return fail(c, K, s.message());
  const std::vector<char> &staging = c.comm->staging(handle);
  int64_t bytes = 0;
  if (Status s = collective_bucket_outputs(c, K, &bytes); !s) return s;
  if (bytes != static_cast<int64_t>(staging.size()))
    return fail(c, K, "the bucket has " + std::to_string(bytes) + " bytes but its start staged " +
                          std::to_string(staging.size()));
  const double scale = c.attr_f("scale", 1.0);
  const float sf = float(scale);
  int64_t off = 0;
  for (const Tensor &y : c.out) {
    const int64_t n = y.numel();
    if (y.dtype == plan::ElemType::BF16) {
      const uint16_t *a = reinterpret_cast<const uint16_t *>(staging.data() + off);
      for (int64_t j = 0; j < n; ++j) y.bf16()[j] = scale != 1.0 ? f32_to_bf16(sf * bf16_to_f32(a[j])) : a[j];
    } else {
      const float *a = reinterpret_cast<const float *>(staging.data() + off);
      for (int64_t j = 0; j < n; ++j) y.f32()[j] = scale != 1.0 ? sf * a[j] : a[j];
    }
    off += y.nbytes();
  }
  return Status::ok();
}

Status p2p_attrs(const KernelCall &c, const char *K, int *peer, int *tag) {
  if (!c.has_int_attr("peer")) return fail(c, K, "missing integer attr 'peer'");
  if (!c.has_int_attr("tag")) return fail(c, K, "missing integer attr 'tag'");
  const int64_t p = c.attr_i("peer", -1), t = c.attr_i("tag", -1);
  if (p < 0 || p > INT32_MAX) return fail(c, K, "attr peer " + std::to_string(p) + " is not a rank");
  if (t < 0 || t > INT32_MAX)
    return fail(c, K, "attr tag " + std::to_string(t) + " is outside [0, 2^31)");
  if (!c.comm) return fail(c, K, "needs a communicator (KernelCall::comm is null)");
  *peer = int(p);
  *tag = int(t);
  return Status::ok();
}

Status send_kernel(KernelCall &c) {
  const char *K = "send";
  if (c.in.size() != 1 || !c.out.empty())
    return fail(c, K, "expected 1 input and no outputs, got " + std::to_string(c.in.size()) +
                          " and " + std::to_string(c.out.size()));
  const Tensor &x = c.in[0];
  if (!x.present() || !is_movable(x)) return fail(c, K, "x must be a present f32, bf16 or i32 tensor");
  int peer = -1, tag = -1;
  if (Status s = p2p_attrs(c, K, &peer, &tag); !s) return s;
  if (Status s = c.comm->send(peer, tag, x.data, x.nbytes()); !s) return fail(c, K, s.message());
  return Status::ok();
}

Status recv_kernel(KernelCall &c) {
  const char *K = "recv";
  if (!c.in.empty() || c.out.size() != 1)
    return fail(c, K, "expected no inputs and 1 output, got " + std::to_string(c.in.size()) +
                          " and " + std::to_string(c.out.size()));
  const Tensor &y = c.out[0];
  if (!y.present() || !is_movable(y)) return fail(c, K, "y must be a present f32, bf16 or i32 tensor");
  int peer = -1, tag = -1;
  if (Status s = p2p_attrs(c, K, &peer, &tag); !s) return s;
  if (Status s = c.comm->recv(peer, tag, y.data, y.nbytes()); !s) return fail(c, K, s.message());
  return Status::ok();
}

} // namespace

// ZeRO-1: every tensor is owned by one member of the group (roots[i], its group index); the
// owners' values are sent to the others, one message per owner (tensors packed in order).
Status broadcast_kernel(KernelCall &c) {
  const char *K = "broadcast";
  std::string group;
  int g = 1;
  std::vector<int64_t> roots;
  if (Status s = collective_broadcast_operands(c, K, &group, &g, &roots); !s) return s;
  std::vector<float> staging;
  for (int r = 0; r < g; ++r) {
    int64_t n = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) n += c.in[i].numel();
    if (n == 0) continue;
    staging.resize(size_t(n));
    int64_t off = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) {
        std::memcpy(staging.data() + off, c.in[i].f32(), size_t(c.in[i].numel()) * sizeof(float));
        off += c.in[i].numel();
      }
    if (c.comm)
      if (Status st = c.comm->broadcast(group, staging.data(), n, r); !st) return fail(c, K, st.message());
    off = 0;
    for (size_t i = 0; i < c.in.size(); ++i)
      if (roots[i] == r) {
        std::memcpy(c.out[i].f32(), staging.data() + off, size_t(c.in[i].numel()) * sizeof(float));
        off += c.in[i].numel();
      }
  }
  return Status::ok();
}

Status collective_error(const KernelCall &c, const char *kernel, const std::string &msg) {
  std::string where = kernel;
  if (c.instr && !c.instr->loc.empty()) where += " (" + c.instr->loc + ")";
  return Status::error(where + ": " + msg);
}

Status collective_group(const KernelCall &c, const char *kernel, std::string *group, int *size) {
  if (!c.instr || !c.instr->attrs.count("group") || !std::holds_alternative<std::string>(c.instr->attrs.at("group")))
    return collective_error(c, kernel, "missing string attr 'group'");
  *group = c.attr_s("group", "");
  *size = 1;
  if (c.comm) {
    StatusOr<int> gs = c.comm->group_size(*group);
    if (!gs) return collective_error(c, kernel, gs.message());
    *size = *gs;
  } else if (!group->empty()) {
    return collective_error(c, kernel, "group '" + *group + "' needs a communicator (KernelCall::comm is null)");
  }
  return Status::ok();
}

Status collective_bucket(const KernelCall &c, const char *K, int *handle) {
  if (!c.has_int_attr("bucket")) return collective_error(c, K, "missing integer attr 'bucket'");
  const int64_t b = c.attr_i("bucket", -1);
  if (b < 0 || b > INT32_MAX) return collective_error(c, K, "attr bucket " + std::to_string(b) + " is outside [0, 2^31)");
  if (!c.comm) return collective_error(c, K, "needs a communicator (KernelCall::comm is null)");
  *handle = int(b);
  return Status::ok();
}

Status collective_pairs(const KernelCall &c, const char *K) {
  if (c.in.size() == c.out.size()) return Status::ok();
  return collective_error(c, K, "expected as many outputs as inputs, got " + std::to_string(c.in.size()) +
                                    " inputs and " + std::to_string(c.out.size()) + " outputs");
}

Status collective_all_reduce_operands(const KernelCall &c, const char *K, std::string *group, int *size,
                                      plan::ElemType *dtype_out, int64_t *total) {
  if (Status s = collective_pairs(c, K); !s) return s;
  if (Status s = collective_group(c, K, group, size); !s) return s;
  const plan::ElemType dtype = c.in.empty() ? plan::ElemType::F32 : c.in[0].dtype;
  const char *tname = dtype == plan::ElemType::BF16 ? "bf16" : "f32";
  *total = 0;
  for (size_t i = 0; i < c.in.size(); ++i) {
    const Tensor &x = c.in[i], &y = c.out[i];
    const std::string si = std::to_string(i);
    if (!x.present() || (x.dtype != plan::ElemType::F32 && x.dtype != plan::ElemType::BF16))
      return collective_error(c, K, "x_" + si + " must be a present f32 or bf16 tensor");
    if (x.dtype != dtype)
      return collective_error(c, K, "x_" + si + " is not " + tname + " like x_0 (one type per all_reduce)");
    if (!y.present() || y.dtype != dtype)
      return collective_error(c, K, "y_" + si + " must be a present " + tname + " tensor");
    if (x.numel() != y.numel())
      return collective_error(c, K, "y_" + si + " has " + std::to_string(y.numel()) + " elements, x_" + si +
                                        " has " + std::to_string(x.numel()));
    *total += x.numel();
  }
  *dtype_out = dtype;
  return Status::ok();
}

Status collective_broadcast_operands(const KernelCall &c, const char *K, std::string *group, int *size,
                                     std::vector<int64_t> *roots_out) {
  if (Status s = collective_pairs(c, K); !s) return s;
  if (Status s = collective_group(c, K, group, size); !s) return s;
  const int g = *size;
  std::vector<int64_t> roots = c.attr_ints("roots");
  if (roots.size() != c.in.size())
    return collective_error(c, K, "attr 'roots' has " + std::to_string(roots.size()) + " entries for " +
                                      std::to_string(c.in.size()) + " tensors");
  for (size_t i = 0; i < c.in.size(); ++i) {
    if (!c.in[i].present() || c.in[i].dtype != plan::ElemType::F32 || !c.out[i].present() ||
        c.out[i].numel() != c.in[i].numel())
      return collective_error(c, K, "tensor " + std::to_string(i) +
                                        " must be a present f32 tensor with as many outputs as inputs");
    if (roots[i] < 0 || roots[i] >= g)
      return collective_error(c, K, "root " + std::to_string(roots[i]) + " of tensor " + std::to_string(i) +
                                        " is not in [0, " + std::to_string(g) + ")");
  }
  *roots_out = std::move(roots);
  return Status::ok();
}

Status collective_bucket_inputs(const KernelCall &c, const char *K, plan::ElemType *dtype_out, int64_t *total,
                                int64_t *bytes) {
  const plan::ElemType dtype = c.in.empty() ? plan::ElemType::F32 : c.in[0].dtype;
  *total = *bytes = 0;
  for (size_t i = 0; i < c.in.size(); ++i) {
    const Tensor &x = c.in[i];
    if (!x.present() || x.dtype != dtype || (dtype != plan::ElemType::F32 && dtype != plan::ElemType::BF16))
      return collective_error(c, K, "x_" + std::to_string(i) + " must be a present f32 or bf16 tensor of x_0's type");
    *total += x.numel();
    *bytes += x.nbytes();
  }
  *dtype_out = dtype;
  return Status::ok();
}

Status collective_bucket_outputs(const KernelCall &c, const char *K, int64_t *bytes) {
  *bytes = 0;
  for (size_t i = 0; i < c.out.size(); ++i) {
    if (!c.out[i].present() || c.out[i].dtype != c.in[i].dtype || c.out[i].numel() != c.in[i].numel())
      return collective_error(c, K, "y_" + std::to_string(i) + " must match x_" + std::to_string(i));
    *bytes += c.out[i].nbytes();
  }
  return Status::ok();
}

void register_collective_kernels(KernelRegistry &registry) {
  registry.add("broadcast", broadcast_kernel);
  registry.add("all_reduce", all_reduce_kernel);
  registry.add("all_reduce_start", all_reduce_start_kernel);
  registry.add("all_reduce_wait", all_reduce_wait_kernel);
  registry.add("send", send_kernel);
  registry.add("recv", recv_kernel);
}

} // namespace parallora::rt
