// Sequence packing in the CPU kernels (runtime/cpu/rope.cpp, attention.cpp): rope_fwd/_bwd with
// position_ids and attention_fwd/_bwd with segment_ids (runtime/cpu/kernels.h).
//   - a packed row of several examples computes what the examples compute one at a time
//     (unpacked kernels on each example's slice), forward and backward, with GQA, causal and
//     not, rows longer than the attention's 64-row blocks, and a padding segment
//   - one segment covering the row is the unpacked kernel, bit for bit
//   - non-contiguous segments against a naive double-precision masked attention
//   - finite differences of the backward kernels with the packing operands
//   - errors: wrong type or shape of the packing operands, positions outside [0, T)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/kernel_test_util.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

using test_util::Attrs;
using test_util::Buf;
using test_util::fd_measure;
using test_util::ints;
using test_util::project;
using test_util::Rng;
using test_util::zeros;

Status run(const std::string &op, std::vector<Buf *> in, std::vector<Buf *> out, const Attrs &attrs) {
  return test_util::run_kernel(op, "model.layers.0.self_attn", in, out, attrs);
}

/// x (B, H, T, Dh): rows [t0, t0 + len) of batch row b, as (1, H, len, Dh).
Buf slice_t(const Buf &x, int64_t b, int64_t t0, int64_t len) {
  const int64_t H = x.shape[1], T = x.shape[2], Dh = x.shape[3];
  Buf y = zeros({1, H, len, Dh});
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < len; ++t)
      for (int64_t i = 0; i < Dh; ++i)
        y.f[size_t((h * len + t) * Dh + i)] = x.f[size_t((((b * H) + h) * T + t0 + t) * Dh + i)];
  return y;
}

/// max |packed[b, :, t0:t0+len] - part| over the slice.
double slice_diff(const Buf &packed, int64_t b, int64_t t0, const Buf &part) {
  Buf s = slice_t(packed, b, t0, part.shape[2]);
  double m = 0;
  for (size_t i = 0; i < s.f.size(); ++i) m = std::max(m, std::fabs(double(s.f[i]) - double(part.f[i])));
  return m;
}

/// Segments as (start, length) runs of every row: the examples packed into the rows.
using Runs = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

/// segment_ids / position_ids of packed rows: run j of a row is segment `first_id + j`,
/// positions restart at 0 in every run.
Buf segment_ids(const Runs &runs, int64_t T, int32_t first_id = 0) {
  std::vector<int32_t> v;
  for (auto &row : runs) {
    std::vector<int32_t> r(size_t(T), -1);
    for (size_t j = 0; j < row.size(); ++j)
      for (int64_t t = row[j].first; t < row[j].first + row[j].second; ++t) r[size_t(t)] = first_id + int32_t(j);
    v.insert(v.end(), r.begin(), r.end());
  }
  return ints({int64_t(runs.size()), T}, v);
}
Buf position_ids(const Runs &runs, int64_t T) {
  std::vector<int32_t> v;
  for (auto &row : runs) {
    std::vector<int32_t> r(size_t(T), 0);
    for (auto [s, len] : row)
      for (int64_t t = 0; t < len; ++t) r[size_t(s + t)] = int32_t(t);
    v.insert(v.end(), r.begin(), r.end());
  }
  return ints({int64_t(runs.size()), T}, v);
}

Attrs rope_attrs() { return {{"theta", 10000.0}}; }

// ------------------------------------------------------------------------------ rope

TEST(PackingKernels, RopePackedRowEqualsExamplesOneByOne) {
  const int64_t B = 2, H = 3, T = 12, Dh = 8;
  const Runs runs = {{{0, 5}, {5, 7}}, {{0, 3}, {3, 3}, {6, 6}}};
  Rng rng(21);
  Buf x = rng.buf({B, H, T, Dh}), y = zeros({B, H, T, Dh}), dx = zeros({B, H, T, Dh});
  Buf pos = position_ids(runs, T);
  RUN_OK("rope_fwd", {&x, &pos}, {&y}, rope_attrs());
  RUN_OK("rope_bwd", {&x, &pos}, {&dx}, rope_attrs());
  for (int64_t b = 0; b < B; ++b)
    for (auto [t0, len] : runs[size_t(b)]) {
      Buf xs = slice_t(x, b, t0, len), ys = zeros({1, H, len, Dh}), dxs = zeros({1, H, len, Dh});
      RUN_OK("rope_fwd", {&xs}, {&ys}, rope_attrs());
      RUN_OK("rope_bwd", {&xs}, {&dxs}, rope_attrs());
      // The same table entries and the same float operations: equal bit for bit.
      EXPECT_EQ(slice_diff(y, b, t0, ys), 0.0) << "row " << b << " example at " << t0;
      EXPECT_EQ(slice_diff(dx, b, t0, dxs), 0.0) << "row " << b << " example at " << t0;
    }
  // A position other than t changes the result (the operand is read, not ignored).
  Buf plain = zeros({B, H, T, Dh});
  RUN_OK("rope_fwd", {&x}, {&plain}, rope_attrs());
  EXPECT_GT(slice_diff(plain, 0, 5, slice_t(y, 0, 5, 7)), 1e-3);
}

TEST(PackingKernels, RopeBwdWithPositionsFiniteDifferences) {
  const int64_t B = 2, H = 2, T = 6, Dh = 8;
  Rng rng(22);
  Buf x = rng.buf({B, H, T, Dh}), R = rng.buf({B, H, T, Dh}), y = zeros({B, H, T, Dh}), dx = zeros({B, H, T, Dh});
  Buf pos = ints({B, T}, {0, 1, 2, 0, 1, 2, 5, 4, 3, 2, 1, 0});
  RUN_OK("rope_bwd", {&R, &pos}, {&dx}, rope_attrs());
  auto loss = [&] {
    EXPECT_TRUE(run("rope_fwd", {&x, &pos}, {&y}, rope_attrs()).is_ok());
    return project(y, R);
  };
  const test_util::FdResult r = fd_measure("rope_bwd dx (position_ids)", x.f, dx.f, loss, 1e-2);
  EXPECT_GT(r.max_grad, 0.1);
  EXPECT_LT(r.rel(), 1e-2);
}

TEST(PackingKernels, RopeRejectsBadPositions) {
  Rng rng(23);
  Buf x = rng.buf({1, 2, 4, 8}), y = zeros({1, 2, 4, 8});
  Buf far = ints({1, 4}, {0, 1, 4, 2}), neg = ints({1, 4}, {0, -1, 0, 1});
  Buf shape = ints({4, 1}, {0, 1, 2, 3}), flt = zeros({1, 4});
  Status s = run("rope_fwd", {&x, &far}, {&y}, rope_attrs());
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("rope_fwd (model.layers.0.self_attn): position_ids value 4 at (b=0, t=2) is outside [0, 4)"),
            std::string::npos)
      << s.message();
  s = run("rope_bwd", {&x, &neg}, {&y}, rope_attrs());
  EXPECT_NE(s.message().find("position_ids value -1 at (b=0, t=1)"), std::string::npos) << s.message();
  s = run("rope_fwd", {&x, &shape}, {&y}, rope_attrs());
  EXPECT_NE(s.message().find("position_ids"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[1, 4]"), std::string::npos) << s.message();
  s = run("rope_fwd", {&x, &flt}, {&y}, rope_attrs());
  EXPECT_NE(s.message().find("position_ids"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("i32"), std::string::npos) << s.message();
}

// ------------------------------------------------------------------------- attention

struct AttnCase {
  int64_t B, Hq, Hkv, T, Dh;
  Runs runs;
  bool causal;
};

/// Forward and backward of packed rows against each example run alone.
void check_packed_attention(const AttnCase &c, uint64_t seed) {
  Rng rng(seed);
  const int64_t B = c.B, Hq = c.Hq, Hkv = c.Hkv, T = c.T, Dh = c.Dh;
  Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, T, Dh}), v = rng.buf({B, Hkv, T, Dh});
  Buf dO = rng.buf({B, Hq, T, Dh});
  Buf o = zeros({B, Hq, T, Dh}), dq = zeros({B, Hq, T, Dh}), dk = zeros({B, Hkv, T, Dh}), dv = zeros({B, Hkv, T, Dh});
  Buf seg = segment_ids(c.runs, T, 7);
  const Attrs at{{"scale", 0.5}, {"causal", int64_t(c.causal)}};
  RUN_OK("attention_fwd", {&q, &k, &v, &seg}, {&o}, at);
  RUN_OK("attention_bwd", {&dO, &q, &k, &v, &seg}, {&dq, &dk, &dv}, at);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (auto [t0, len] : c.runs[size_t(b)]) {
      Buf qs = slice_t(q, b, t0, len), ks = slice_t(k, b, t0, len), vs = slice_t(v, b, t0, len);
      Buf dOs = slice_t(dO, b, t0, len), os = zeros({1, Hq, len, Dh});
      Buf dqs = zeros({1, Hq, len, Dh}), dks = zeros({1, Hkv, len, Dh}), dvs = zeros({1, Hkv, len, Dh});
      RUN_OK("attention_fwd", {&qs, &ks, &vs}, {&os}, at);
      RUN_OK("attention_bwd", {&dOs, &qs, &ks, &vs}, {&dqs, &dks, &dvs}, at);
      for (double d : {slice_diff(o, b, t0, os), slice_diff(dq, b, t0, dqs), slice_diff(dk, b, t0, dks),
                       slice_diff(dv, b, t0, dvs)}) {
        EXPECT_LT(d, 2e-6) << "row " << b << ", example at " << t0 << " of " << len;
        worst = std::max(worst, d);
      }
    }
  std::printf("[packed vs one by one] B=%lld Hq=%lld Hkv=%lld T=%lld %s: max abs diff %.3e\n", (long long)B,
              (long long)Hq, (long long)Hkv, (long long)T, c.causal ? "causal" : "non-causal", worst);
}

TEST(PackingKernels, AttentionPackedRowEqualsExamplesOneByOne) {
  // Two rows of two and three examples; the last run of row 1 is padding (its own segment).
  check_packed_attention({2, 4, 2, 16, 8, {{{0, 6}, {6, 10}}, {{0, 3}, {3, 9}, {12, 4}}}, true}, 31);
  // Rows longer than the kernel's 64-row blocks: examples start and end inside blocks.
  check_packed_attention({1, 2, 1, 150, 4, {{{0, 40}, {40, 70}, {110, 1}, {111, 39}}}, true}, 32);
  // Without the causal mask every token sees its whole example (and no other).
  check_packed_attention({2, 2, 2, 10, 4, {{{0, 4}, {4, 6}}, {{0, 10}}}, false}, 33);
}

TEST(PackingKernels, OneSegmentIsTheUnpackedKernelBitForBit) {
  Rng rng(34);
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 70, Dh = 8;
  Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, T, Dh}), v = rng.buf({B, Hkv, T, Dh}), dO = rng.buf({B, Hq, T, Dh});
  Buf seg = ints({B, T}, std::vector<int32_t>(size_t(B * T), 3));
  const Attrs at{{"scale", 0.35}, {"causal", int64_t(1)}};
  Buf o1 = zeros({B, Hq, T, Dh}), o2 = o1, dq1 = o1, dq2 = o1, dk1 = zeros({B, Hkv, T, Dh}), dk2 = dk1, dv1 = dk1, dv2 = dk1;
  RUN_OK("attention_fwd", {&q, &k, &v}, {&o1}, at);
  RUN_OK("attention_fwd", {&q, &k, &v, &seg}, {&o2}, at);
  RUN_OK("attention_bwd", {&dO, &q, &k, &v}, {&dq1, &dk1, &dv1}, at);
  RUN_OK("attention_bwd", {&dO, &q, &k, &v, &seg}, {&dq2, &dk2, &dv2}, at);
  EXPECT_EQ(0, std::memcmp(o1.f.data(), o2.f.data(), o1.f.size() * 4));
  EXPECT_EQ(0, std::memcmp(dq1.f.data(), dq2.f.data(), dq1.f.size() * 4));
  EXPECT_EQ(0, std::memcmp(dk1.f.data(), dk2.f.data(), dk1.f.size() * 4));
  EXPECT_EQ(0, std::memcmp(dv1.f.data(), dv2.f.data(), dv1.f.size() * 4));
}

/// Naive masked attention in double: key s visible to query t iff seg equal (and s <= t).
std::vector<double> ref_masked_attention(const Buf &q, const Buf &k, const Buf &v, const Buf &seg, double scale,
                                         bool causal) {
  const int64_t B = q.shape[0], Hq = q.shape[1], T = q.shape[2], Dh = q.shape[3], Hkv = k.shape[1];
  std::vector<double> o(q.f.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hkv);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> p(size_t(T), 0.0);
        double m = -1e300, sum = 0;
        auto vis = [&](int64_t s) { return seg.i[size_t(b * T + s)] == seg.i[size_t(b * T + t)] && (!causal || s <= t); };
        for (int64_t s = 0; s < T; ++s) {
          if (!vis(s)) continue;
          double d = 0;
          for (int64_t i = 0; i < Dh; ++i)
            d += double(q.f[size_t(((b * Hq + h) * T + t) * Dh + i)]) * k.f[size_t(((b * Hkv + hk) * T + s) * Dh + i)];
          p[size_t(s)] = d * scale;
          m = std::max(m, p[size_t(s)]);
        }
        for (int64_t s = 0; s < T; ++s) p[size_t(s)] = vis(s) ? std::exp(p[size_t(s)] - m) : 0.0, sum += p[size_t(s)];
        for (int64_t s = 0; s < T; ++s)
          for (int64_t i = 0; i < Dh; ++i)
            o[size_t(((b * Hq + h) * T + t) * Dh + i)] += p[size_t(s)] / sum * v.f[size_t(((b * Hkv + hk) * T + s) * Dh + i)];
      }
    }
  return o;
}

TEST(PackingKernels, NonContiguousSegmentsMatchANaiveMaskedAttention) {
  Rng rng(35);
  const int64_t B = 2, Hq = 2, Hkv = 1, T = 9, Dh = 4;
  Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, T, Dh}), v = rng.buf({B, Hkv, T, Dh}), o = zeros({B, Hq, T, Dh});
  Buf seg = ints({B, T}, {0, 1, 0, 1, 2, 2, 0, 1, 2, /**/ 5, 5, 9, 5, 9, 9, 5, 1, 1});
  for (bool causal : {true, false}) {
    const Attrs at{{"scale", 0.6}, {"causal", int64_t(causal)}};
    RUN_OK("attention_fwd", {&q, &k, &v, &seg}, {&o}, at);
    std::vector<double> ref = ref_masked_attention(q, k, v, seg, 0.6, causal);
    double m = 0;
    for (size_t i = 0; i < ref.size(); ++i) m = std::max(m, std::fabs(o.f[i] - ref[i]));
    std::printf("[masked reference] %s max abs err %.3e\n", causal ? "causal" : "non-causal", m);
    EXPECT_LT(m, 1e-6);
  }
}

TEST(PackingKernels, AttentionBwdWithSegmentsFiniteDifferences) {
  Rng rng(36);
  const int64_t B = 2, Hq = 4, Hkv = 2, T = 7, Dh = 4;
  Buf q = rng.buf({B, Hq, T, Dh}), k = rng.buf({B, Hkv, T, Dh}), v = rng.buf({B, Hkv, T, Dh}), R = rng.buf({B, Hq, T, Dh});
  Buf o = zeros({B, Hq, T, Dh}), dq = zeros({B, Hq, T, Dh}), dk = zeros({B, Hkv, T, Dh}), dv = zeros({B, Hkv, T, Dh});
  Buf seg = ints({B, T}, {0, 0, 0, 1, 1, 1, 1, /**/ 4, 4, 6, 6, 6, 6, 6});
  const Attrs at{{"scale", 0.7}, {"causal", int64_t(1)}};
  RUN_OK("attention_bwd", {&R, &q, &k, &v, &seg}, {&dq, &dk, &dv}, at);
  auto loss = [&] {
    EXPECT_TRUE(run("attention_fwd", {&q, &k, &v, &seg}, {&o}, at).is_ok());
    return project(o, R);
  };
  auto fd = [&](const char *name, std::vector<float> &x, const std::vector<float> &g) {
    const test_util::FdResult r = fd_measure(std::string("attention_bwd ") + name + " (segment_ids)", x, g, loss);
    EXPECT_GT(r.max_grad, 1e-2) << name;
    EXPECT_LT(r.rel(), 1e-2) << name;
  };
  fd("dq", q.f, dq.f);
  fd("dk", k.f, dk.f);
  fd("dv", v.f, dv.f);
}

TEST(PackingKernels, AttentionRejectsBadSegmentIds) {
  Rng rng(37);
  Buf q = rng.buf({1, 2, 4, 4}), k = rng.buf({1, 2, 4, 4}), o = zeros({1, 2, 4, 4});
  Buf kx = rng.buf({1, 2, 5, 4}), flt = zeros({1, 4}), shape = ints({1, 3}, {0, 0, 1}), ok = ints({1, 4}, {0, 0, 1, 1});
  const Attrs at{{"scale", 0.5}, {"causal", int64_t(1)}}, cross{{"scale", 0.5}, {"causal", int64_t(0)}};
  Status s = run("attention_fwd", {&q, &k, &k, &flt}, {&o}, at);
  EXPECT_NE(s.message().find("attention_fwd (model.layers.0.self_attn): operand segment_ids"), std::string::npos) << s.message();
  s = run("attention_fwd", {&q, &k, &k, &shape}, {&o}, at);
  EXPECT_NE(s.message().find("segment_ids"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[1, 4]"), std::string::npos) << s.message();
  s = run("attention_fwd", {&q, &kx, &kx, &ok}, {&o}, cross);
  EXPECT_NE(s.message().find("segment_ids need self-attention (T == S), got T = 4, S = 5"), std::string::npos)
      << s.message();
  Buf dq = zeros({1, 2, 4, 4}), dk = dq, dv = dq;
  s = run("attention_bwd", {&o, &q, &k, &k, &shape}, {&dq, &dk, &dv}, at);
  EXPECT_NE(s.message().find("attention_bwd (model.layers.0.self_attn):"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("segment_ids"), std::string::npos) << s.message();
}

} // namespace
