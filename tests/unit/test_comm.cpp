// Tests for runtime/comm: the Communicator (local and MPI), the collective kernels, and the
// CPU kernels' parallel forms (vocab_group, norm_group). Runs under `mpirun -np 4` (ctest's
// test_comm_mpi4); every rank runs every test in the same order, so the tests' collectives
// match up. Only rank 0 prints the usual report; other ranks print their failures, and the
// process exit code is non-zero when any rank failed.
//   - coordinates, group sizes and members for meshes 4x1x1, 1x4x1, 2x2x1, 1x2x2
//   - all_reduce sum / max on every group; bytes counters against the formula
//   - the all_reduce kernel (a bucket, in place, scale), send / recv kernels (order per tag)
//   - timeouts: a recv from a peer that never sends fails after 0.5 s, leaves no stray receive
//   - the control plane (barrier, all_reduce_f64, gather_f64, broadcast_bytes, send_control /
//     recv_control): plain MPI's results, bit for bit; nothing counted in bytes_sent; a rank
//     that does not join makes the others fail after the timeout naming it, then joins late
//   - vocabulary-parallel embedding and cross entropy (fwd + bwd) against the unsharded kernels
//   - adamw_step with norm_group / norm_divisors against the unsharded update
//   - the local communicator, and a world-size mismatch
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/host_buffers.h"

#include "runtime/base/bf16.h"
#include "runtime/comm/comm.h"
#include "runtime/cpu/kernels.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

using Attrs = std::map<std::string, plan::AttrValue>;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

#define REQUIRE_WORLD_4()                                                                        \
  do {                                                                                           \
    if (world_size() != 4) GTEST_SKIP() << "needs mpirun -np 4";                                 \
  } while (0)

const std::vector<plan::Mesh> kMeshes = {{4, 1, 1}, {1, 4, 1}, {2, 2, 1}, {1, 2, 2}};
const std::vector<std::string> kGroups = {"",      "dp",    "tp",    "pp",
                                          "dp,tp", "dp,pp", "tp,pp", "dp,tp,pp"};

std::string mesh_str(const plan::Mesh &m) {
  return std::to_string(m.dp) + "x" + std::to_string(m.tp) + "x" + std::to_string(m.pp);
}

/// Members of `rank`'s group, computed independently of the library.
std::vector<int> members_of(const plan::Mesh &m, int rank, const std::string &group) {
  const bool in_dp = group.find("dp") != std::string::npos,
             in_tp = group.find("tp") != std::string::npos,
             in_pp = group.find("pp") != std::string::npos;
  const plan::MeshCoord me = plan::coord_of(m, rank);
  std::vector<int> out;
  for (int pp = 0; pp < m.pp; ++pp)
    for (int dp = 0; dp < m.dp; ++dp)
      for (int tp = 0; tp < m.tp; ++tp) {
        if (!in_dp && dp != me.dp) continue;
        if (!in_tp && tp != me.tp) continue;
        if (!in_pp && pp != me.pp) continue;
        out.push_back(plan::rank_of(m, dp, tp, pp));
      }
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<Communicator> make_comm(const plan::Mesh &m, double timeout = 30) {
  StatusOr<std::unique_ptr<Communicator>> c = make_mpi_communicator(m, timeout);
  EXPECT_TRUE(c.is_ok()) << c.message();
  if (!c.is_ok()) return nullptr;
  return std::move(*c);
}

int64_t bytes_of(const Communicator &c, const std::string &kind) {
  auto it = c.bytes_sent().find(kind);
  return it == c.bytes_sent().end() ? 0 : it->second;
}

using test_util::Buf;
using test_util::ints;
using test_util::Rng;
using test_util::zeros;

const KernelRegistry &registry() {
  static const KernelRegistry reg = [] {
    KernelRegistry r;
    cpu::register_kernels(r);
    register_collective_kernels(r);
    return r;
  }();
  return reg;
}

/// Runs kernel `op`; a null Buf* is an absent operand. `same_out` maps an output index to the
/// input index whose buffer it shares (in-place operands).
Status run(const std::string &op, std::vector<Buf *> in, std::vector<Buf *> out, Attrs attrs,
           Communicator *comm, StepState *step = nullptr) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = "test." + op;
  KernelCall call;
  call.instr = &instr;
  call.step = step;
  call.comm = comm;
  for (Buf *b : in) call.in.push_back(b ? b->tensor() : Tensor());
  for (Buf *b : out) call.out.push_back(b ? b->tensor() : Tensor());
  const KernelFn *fn = registry().find(op);
  if (!fn) return Status::error("no kernel named " + op);
  return (*fn)(call);
}

#define EXPECT_OK(expr)                                                                          \
  do {                                                                                           \
    Status s_ = (expr);                                                                          \
    EXPECT_TRUE(s_.is_ok()) << s_.message();                                                     \
  } while (0)

/// Columns [lo, lo + w) of a (rows, V) row-major matrix.
std::vector<float> columns(const std::vector<float> &a, int64_t rows, int64_t V, int64_t lo,
                           int64_t w) {
  std::vector<float> out(size_t(rows * w));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < w; ++j) out[size_t(r * w + j)] = a[size_t(r * V + lo + j)];
  return out;
}

float max_abs_diff(const std::vector<float> &a, const std::vector<float> &b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// ------------------------------------------------------------------ mesh arithmetic

TEST(Comm, CoordsAndGroups) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  for (const plan::Mesh &m : kMeshes) {
    SCOPED_TRACE("mesh " + mesh_str(m));
    auto comm = make_comm(m);
    if (!comm) continue;
    EXPECT_EQ(comm->rank(), me);
    EXPECT_EQ(comm->world_size(), 4);
    const plan::MeshCoord c = plan::coord_of(m, me);
    EXPECT_EQ(comm->coord("dp"), c.dp);
    EXPECT_EQ(comm->coord("tp"), c.tp);
    EXPECT_EQ(comm->coord("pp"), c.pp);
    EXPECT_EQ(comm->coord("xp"), -1);
    EXPECT_EQ(plan::rank_of(m, c.dp, c.tp, c.pp), me);
    for (const std::string &g : kGroups) {
      SCOPED_TRACE("group '" + g + "'");
      const std::vector<int> expect = members_of(m, me, g);
      StatusOr<int> size = comm->group_size(g);
      ASSERT_TRUE(size.is_ok()) << size.message();
      EXPECT_EQ(*size, int(expect.size()));
      StatusOr<std::vector<int>> ranks = comm->group_ranks(g);
      ASSERT_TRUE(ranks.is_ok()) << ranks.message();
      EXPECT_EQ(*ranks, expect);
      StatusOr<int> idx = comm->group_rank(g);
      ASSERT_TRUE(idx.is_ok());
      EXPECT_EQ(*idx, int(std::find(expect.begin(), expect.end(), me) - expect.begin()));
    }
    EXPECT_EQ(*comm->group_rank("tp"), c.tp);
    EXPECT_EQ(*comm->group_rank("dp"), c.dp);
    EXPECT_EQ(*comm->group_rank("pp"), c.pp);
    StatusOr<int> bad = comm->group_size("dp,xp");
    ASSERT_FALSE(bad.is_ok());
    EXPECT_NE(bad.message().find("'xp'"), std::string::npos) << bad.message();
    EXPECT_FALSE(comm->group_size("tp,tp").is_ok());
  }
}

TEST(Comm, HandPickedCoords) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  {
    auto comm = make_comm({2, 2, 1});
    ASSERT_TRUE(comm);
    // r = dp * 2 + tp
    EXPECT_EQ(comm->coord("dp"), me / 2);
    EXPECT_EQ(comm->coord("tp"), me % 2);
    EXPECT_EQ(*comm->group_ranks("tp"), (me < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3}));
    EXPECT_EQ(*comm->group_ranks("dp"),
              (me % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3}));
    EXPECT_EQ(*comm->group_ranks("pp"), std::vector<int>{me});
    EXPECT_EQ(*comm->group_size("dp,tp"), 4);
  }
  {
    auto comm = make_comm({1, 2, 2});
    ASSERT_TRUE(comm);
    // r = pp * 2 + tp
    EXPECT_EQ(comm->coord("pp"), me / 2);
    EXPECT_EQ(comm->coord("tp"), me % 2);
    EXPECT_EQ(comm->coord("dp"), 0);
    EXPECT_EQ(*comm->group_ranks("pp"),
              (me % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3}));
    EXPECT_EQ(*comm->group_size("dp"), 1);
    EXPECT_EQ(*comm->group_size("tp,pp"), 4);
  }
}

TEST(Comm, WorldSizeMismatch) {
  REQUIRE_WORLD_4();
  StatusOr<std::unique_ptr<Communicator>> c = make_mpi_communicator({2, 2, 2});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.message().find("plan was compiled for 8 ranks (dp 2 x tp 2 x pp 2) but this MPI "
                             "world has 4"),
            std::string::npos)
      << c.message();
}

// ------------------------------------------------------------------ all_reduce

float value(int rank, int64_t k) { return float(((rank + 1) * 7 + k * 3) % 13) - 4.0f; }

TEST(Comm, AllReduceEveryGroup) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  for (const plan::Mesh &m : kMeshes) {
    SCOPED_TRACE("mesh " + mesh_str(m));
    auto comm = make_comm(m);
    if (!comm) continue;
    int64_t expect_bytes = 0;
    for (const std::string &g : kGroups) {
      SCOPED_TRACE("group '" + g + "'");
      const std::vector<int> members = members_of(m, me, g);
      for (int64_t count : {int64_t(1), int64_t(7), int64_t(5000)}) {
        std::vector<float> sum(static_cast<size_t>(count)), mx(static_cast<size_t>(count));
        for (int64_t k = 0; k < count; ++k) sum[size_t(k)] = mx[size_t(k)] = value(me, k);
        EXPECT_OK(comm->all_reduce(g, sum.data(), count, ReduceOp::Sum));
        EXPECT_OK(comm->all_reduce(g, mx.data(), count, ReduceOp::Max));
        expect_bytes += 2 * all_reduce_bytes_sent(count * 4, int(members.size()));
        int bad = 0;
        for (int64_t k = 0; k < count; ++k) {
          float s = 0, x = -1e30f;
          for (int r : members) {
            s += value(r, k);
            x = std::max(x, value(r, k));
          }
          if (sum[size_t(k)] != s || mx[size_t(k)] != x) ++bad;
        }
        EXPECT_EQ(bad, 0) << "count " << count;
      }
    }
    EXPECT_EQ(bytes_of(*comm, "all_reduce"), expect_bytes);
    EXPECT_EQ(bytes_of(*comm, "send"), 0);
    comm->reset_bytes();
    EXPECT_TRUE(comm->bytes_sent().empty());
    Status bad = comm->all_reduce("tp,mp", nullptr, 0, ReduceOp::Sum);
    EXPECT_FALSE(bad.is_ok());
    EXPECT_NE(bad.message().find("'mp'"), std::string::npos) << bad.message();
  }
}

// bf16 all-reduce (tensor-parallel activations of --precision bf16 plans): bf16 bytes on the
// wire, every combination summed in f32 and rounded to bf16.
TEST(Comm, AllReduceBf16) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({2, 2, 1});
  ASSERT_TRUE(comm);
  auto val = [](int rank, int64_t k) { return round_to_bf16(1.0137f * value(rank, k) + 0.3711f * float(rank + 1)); };
  const int64_t n = 1000;
  for (const std::string g : {"tp", "dp,tp"}) {
    SCOPED_TRACE("group '" + g + "'");
    const std::vector<int> members = members_of({2, 2, 1}, me, g);
    std::vector<uint16_t> x(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) x[size_t(k)] = f32_to_bf16(val(me, k));
    comm->reset_bytes();
    EXPECT_OK(comm->all_reduce(g, x.data(), n, plan::ElemType::BF16, ReduceOp::Sum));
    EXPECT_EQ(bytes_of(*comm, "all_reduce"), all_reduce_bytes_sent(n * 2, int(members.size())));
    int bad = 0, inexact = 0;
    std::vector<float> got(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      got[size_t(k)] = bf16_to_f32(x[size_t(k)]);
      double exact = 0, mag = 0;
      for (int r : members) exact += val(r, k), mag += std::fabs(val(r, k));
      if (members.size() == 2) {  // one combination: exactly round(a + b)
        if (got[size_t(k)] != round_to_bf16(val(members[0], k) + val(members[1], k))) ++bad;
      } else if (std::fabs(got[size_t(k)] - exact) > (members.size() - 1) * mag * std::ldexp(1.0, -8)) {
        ++bad;  // at most one bf16 rounding (half an ulp, 2^-8 relative) per combination
      }
      inexact += double(got[size_t(k)]) != exact;
    }
    EXPECT_EQ(bad, 0);
    EXPECT_GT(inexact, 0) << "the values must exercise rounding";
    // Every member holds the same bits: the f32 max and sum over the group agree with them.
    std::vector<float> mx = got, sum = got;
    EXPECT_OK(comm->all_reduce(g, mx.data(), n, ReduceOp::Max));
    EXPECT_OK(comm->all_reduce(g, sum.data(), n, ReduceOp::Sum));
    int differ = 0;
    for (int64_t k = 0; k < n; ++k)
      differ += mx[size_t(k)] != got[size_t(k)] || sum[size_t(k)] != float(members.size()) * got[size_t(k)];
    EXPECT_EQ(differ, 0);
  }
  // i32 data is refused.
  int32_t ints[2] = {1, 2};
  Status bad = comm->all_reduce("tp", ints, 2, plan::ElemType::I32, ReduceOp::Sum);
  EXPECT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("i32"), std::string::npos) << bad.message();
}

// Non-blocking all-reduce (overlapped gradient buckets): two buckets in flight at once, progress
// between them, then the waits give exactly the blocking result; misuse is an error.
TEST(Comm, AllReduceStartWait) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({4, 1, 1});
  ASSERT_TRUE(comm);
  const int64_t n = 3000;
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) a[size_t(k)] = b[size_t(k)] = ref[size_t(k)] = 0.1f * value(me, k) + 0.013f * float(me);
  EXPECT_OK(comm->all_reduce("dp", ref.data(), n, ReduceOp::Sum));
  comm->reset_bytes();
  EXPECT_OK(comm->all_reduce_start(0, "dp", a.data(), n, plan::ElemType::F32, ReduceOp::Sum));
  EXPECT_OK(comm->all_reduce_start(1, "dp", b.data(), n, plan::ElemType::F32, ReduceOp::Sum));
  EXPECT_TRUE(comm->started(0) && comm->started(1) && comm->any_started());
  Status twice = comm->all_reduce_start(0, "dp", a.data(), n, plan::ElemType::F32, ReduceOp::Sum);
  EXPECT_FALSE(twice.is_ok());
  EXPECT_NE(twice.message().find("never waited for"), std::string::npos) << twice.message();
  comm->progress();
  EXPECT_OK(comm->all_reduce_wait(1));
  EXPECT_OK(comm->all_reduce_wait(0));
  EXPECT_FALSE(comm->any_started());
  EXPECT_EQ(bytes_of(*comm, "all_reduce"), 2 * all_reduce_bytes_sent(n * 4, 4));
  int bad = 0;
  for (int64_t k = 0; k < n; ++k) bad += a[size_t(k)] != ref[size_t(k)] || b[size_t(k)] != ref[size_t(k)];
  EXPECT_EQ(bad, 0);
  Status unknown = comm->all_reduce_wait(5);
  EXPECT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.message().find("bucket 5"), std::string::npos) << unknown.message();
}

TEST(Comm, BytesFormula) {
  EXPECT_EQ(all_reduce_bytes_sent(4096, 1), 0);
  EXPECT_EQ(all_reduce_bytes_sent(4096, 2), 4096);
  EXPECT_EQ(all_reduce_bytes_sent(4096, 4), 6144);
  EXPECT_EQ(all_reduce_bytes_sent(12, 8), 21);  // 2*7*12/8 = 21, rounded down
}

TEST(CollectiveKernels, AllReduceBucketWithScale) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({2, 2, 1});
  ASSERT_TRUE(comm);
  for (const std::string g : {"tp", "dp,tp", "dp", ""}) {
    SCOPED_TRACE("group '" + g + "'");
    const std::vector<int> members = members_of({2, 2, 1}, me, g);
    Buf x0 = zeros({3, 4}), x1 = zeros({5}), x2 = zeros({2, 2}), y1 = zeros({5}),
        y2 = zeros({4});  // y2 is (4) for x2 (2,2): same element count
    int64_t k = 0;
    for (Buf *b : {&x0, &x1, &x2})
      for (float &v : b->f) v = value(me, k++);
    comm->reset_bytes();
    // y0 is x0 itself (in place).
    EXPECT_OK(run("all_reduce", {&x0, &x1, &x2}, {&x0, &y1, &y2},
                  {{"group", std::string(g)}, {"scale", 0.25}}, comm.get()));
    EXPECT_EQ(bytes_of(*comm, "all_reduce"),
              all_reduce_bytes_sent((12 + 5 + 4) * 4, int(members.size())));
    k = 0;
    int bad = 0;
    for (Buf *b : {&x0, &y1, &y2})
      for (float v : b->f) {
        float s = 0;
        for (int r : members) s += value(r, k);
        if (v != 0.25f * s) ++bad;
        ++k;
      }
    EXPECT_EQ(bad, 0);
    // x1, x2 untouched.
    EXPECT_EQ(x1.f[0], value(me, 12));
    EXPECT_EQ(x2.f[3], value(me, 20));
  }
  // One tensor, in place, default scale.
  Buf x = zeros({6});
  for (int64_t k = 0; k < 6; ++k) x.f[size_t(k)] = value(me, k);
  EXPECT_OK(run("all_reduce", {&x}, {&x}, {{"group", std::string("dp,tp")}}, comm.get()));
  for (int64_t k = 0; k < 6; ++k)
    EXPECT_EQ(x.f[size_t(k)], value(0, k) + value(1, k) + value(2, k) + value(3, k));
  // Errors: no group attr; a group without a communicator; mismatched counts.
  EXPECT_FALSE(run("all_reduce", {&x}, {&x}, {}, comm.get()).is_ok());
  Status s = run("all_reduce", {&x}, {&x}, {{"group", std::string("tp")}}, nullptr);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("communicator"), std::string::npos) << s.message();
  Buf y = zeros({5});
  EXPECT_FALSE(run("all_reduce", {&x}, {&y}, {{"group", std::string("tp")}}, comm.get()).is_ok());
  // Group "" without a communicator: just the scale.
  Buf z = zeros({2}, 3.0f);
  EXPECT_OK(run("all_reduce", {&z}, {&z}, {{"group", std::string("")}, {"scale", 0.5}}, nullptr));
  EXPECT_EQ(z.f[1], 1.5f);
}

// ------------------------------------------------------------------ send / recv

TEST(CollectiveKernels, SendRecvInOrder) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({1, 1, 4});
  ASSERT_TRUE(comm);
  const int next = (me + 1) % 4, prev = (me + 3) % 4;
  Buf a = zeros({3}), b = zeros({3});
  a.f = {float(me), 1.0f, -1.0f};
  b.f = {float(me), 2.0f, -2.0f};
  Buf ids = ints({2, 2}, {me, 10 * me, -me, 7});
  const Attrs to_next = {{"peer", int64_t(next)}, {"tag", int64_t(5)}};
  const Attrs from_prev = {{"peer", int64_t(prev)}, {"tag", int64_t(5)}};
  EXPECT_OK(run("send", {&a}, {}, to_next, comm.get()));
  a.f = {-9, -9, -9};  // the data was staged: changing it now does not change the message
  EXPECT_OK(run("send", {&b}, {}, to_next, comm.get()));
  EXPECT_OK(run("send", {&ids}, {}, {{"peer", int64_t(next)}, {"tag", int64_t(6)}}, comm.get()));
  EXPECT_EQ(bytes_of(*comm, "send"), 12 + 12 + 16);
  // Receive tag 6 first: matching is per (peer, tag).
  Buf rids = ints({4}, {0, 0, 0, 0});
  EXPECT_OK(run("recv", {}, {&rids}, {{"peer", int64_t(prev)}, {"tag", int64_t(6)}}, comm.get()));
  EXPECT_EQ(rids.i, (std::vector<int32_t>{prev, 10 * prev, -prev, 7}));
  Buf r1 = zeros({3}), r2 = zeros({3});
  EXPECT_OK(run("recv", {}, {&r1}, from_prev, comm.get()));
  EXPECT_OK(run("recv", {}, {&r2}, from_prev, comm.get()));
  EXPECT_EQ(r1.f, (std::vector<float>{float(prev), 1.0f, -1.0f}));
  EXPECT_EQ(r2.f, (std::vector<float>{float(prev), 2.0f, -2.0f}));
  EXPECT_OK(comm->flush());
  EXPECT_EQ(bytes_of(*comm, "send"), 40);  // recv counts nothing
  EXPECT_EQ(bytes_of(*comm, "all_reduce"), 0);

  // Errors: bad peer, bad tag, no communicator, missing attrs.
  EXPECT_FALSE(run("send", {&b}, {}, {{"peer", int64_t(4)}, {"tag", int64_t(0)}}, comm.get()).is_ok());
  EXPECT_FALSE(comm->send(0, -1, b.f.data(), 4).is_ok());
  EXPECT_FALSE(run("send", {&b}, {}, to_next, nullptr).is_ok());
  EXPECT_FALSE(run("recv", {}, {&r1}, {{"peer", int64_t(prev)}}, comm.get()).is_ok());

  // Size mismatches are errors and consume the message (no stray): rank 0 sends 8 bytes to
  // rank 1 which expects 4, and 4 bytes to rank 2 which expects 8.
  if (me == 0) {
    const float two[2] = {1, 2};
    EXPECT_OK(comm->send(1, 77, two, 8));
    EXPECT_OK(comm->send(2, 78, two, 4));
  } else if (me == 1) {
    float one[1];
    Status s = comm->recv(0, 77, one, 4);
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("rank 0"), std::string::npos) << s.message();
  } else if (me == 2) {
    float two[2];
    Status s = comm->recv(0, 78, two, 8);
    EXPECT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("4 bytes"), std::string::npos) << s.message();
  }
  EXPECT_OK(comm->flush());
  // Self messages work too.
  const float self_msg[2] = {float(me), 3.5f};
  float got[2] = {0, 0};
  EXPECT_OK(comm->send(me, 9, self_msg, 8));
  EXPECT_OK(comm->recv(me, 9, got, 8));
  EXPECT_EQ(got[0], float(me));
  EXPECT_EQ(got[1], 3.5f);
  EXPECT_OK(comm->flush());
}

TEST(Comm, RecvTimeoutNoHangNoStray) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({1, 4, 1});
  ASSERT_TRUE(comm);
  if (me == 1) {
    comm->timeout_seconds = 0.5;
    float buf[4];
    const auto t0 = std::chrono::steady_clock::now();
    Status s = comm->recv(3, 999, buf, 16);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(s.is_ok());
    EXPECT_GE(secs, 0.45);
    EXPECT_LT(secs, 10.0);
    for (const char *part : {"rank 1:", "recv from rank 3", "tag 999", "16 bytes", "0.5 s"})
      EXPECT_NE(s.message().find(part), std::string::npos) << part << " in: " << s.message();
    comm->timeout_seconds = 30;
  }
  // Everyone meets again.
  float sync = 1;
  EXPECT_OK(comm->all_reduce("tp", &sync, 1, ReduceOp::Sum));
  EXPECT_EQ(sync, 4.0f);
  // Now rank 3 really sends with that tag: the cancelled receive must not have swallowed it,
  // and the next one gets it.
  if (me == 3) {
    const float msg[4] = {42, 43, 44, 45};
    EXPECT_OK(comm->send(1, 999, msg, 16));
  } else if (me == 1) {
    float buf[4] = {0, 0, 0, 0};
    EXPECT_OK(comm->recv(3, 999, buf, 16));
    EXPECT_EQ(buf[0], 42.0f);
    EXPECT_EQ(buf[3], 45.0f);
  }
  EXPECT_OK(comm->flush());
  sync = 1;
  EXPECT_OK(comm->all_reduce("tp", &sync, 1, ReduceOp::Sum));
  EXPECT_EQ(sync, 4.0f);
}

TEST(Comm, AllReduceTimeout) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({4, 1, 1});
  ASSERT_TRUE(comm);
  // Rank 0 reduces over 'dp' alone and gives up after 0.5 s; the group is then unusable on
  // rank 0. The others join late (after rank 0's signal), which completes the abandoned
  // reduction, so nothing is left pending.
  std::vector<float> data(1024, float(me + 1));
  if (me == 0) {
    comm->timeout_seconds = 0.5;
    const auto t0 = std::chrono::steady_clock::now();
    Status s = comm->all_reduce("dp", data.data(), 1024, ReduceOp::Sum);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_FALSE(s.is_ok());
    EXPECT_LT(secs, 10.0);
    EXPECT_NE(s.message().find("rank 0: all_reduce over group 'dp' (ranks 0,1,2,3) of 4096 bytes "
                               "did not complete within 0.5 s (a peer died or is stuck)"),
              std::string::npos)
        << s.message();
    Status again = comm->all_reduce("dp", data.data(), 1, ReduceOp::Sum);
    EXPECT_FALSE(again.is_ok());
    EXPECT_NE(again.message().find("timed out"), std::string::npos) << again.message();
    comm->timeout_seconds = 30;
    const int go = 1;
    for (int r = 1; r < 4; ++r) EXPECT_OK(comm->send(r, 50, &go, 4));
    for (int r = 1; r < 4; ++r) {
      int done = 0;
      EXPECT_OK(comm->recv(r, 51, &done, 4));  // polling drives the abandoned reduction
    }
    EXPECT_EQ(data[0], 10.0f);  // 1 + 2 + 3 + 4, written late into rank 0's buffer
  } else {
    int go = 0;
    EXPECT_OK(comm->recv(0, 50, &go, 4));
    EXPECT_OK(comm->all_reduce("dp", data.data(), 1024, ReduceOp::Sum));
    EXPECT_EQ(data[1023], 10.0f);
    const int done = 1;
    EXPECT_OK(comm->send(0, 51, &done, 4));
  }
  EXPECT_OK(comm->flush());
}

TEST(Comm, FlushTimeoutNamesTheSend) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({4, 1, 1});
  ASSERT_TRUE(comm);
  // 8 MiB is far above any eager limit: the send cannot complete before rank 2 receives it.
  const int64_t n = int64_t(2) << 20;
  if (me == 0) {
    std::vector<float> big(size_t(n), 1.5f);
    EXPECT_OK(comm->send(2, 1234, big.data(), n * 4));
    big.assign(size_t(n), 0.0f);  // staged: the message keeps 1.5
    comm->timeout_seconds = 0.5;
    Status s = comm->flush();
    if (s.is_ok()) {
      std::printf("note: the transport completed an 8 MiB send without the receiver\n");
    } else {
      for (const char *part : {"send to rank 2", "tag 1234", "did not complete within 0.5 s"})
        EXPECT_NE(s.message().find(part), std::string::npos) << part << " in: " << s.message();
    }
    comm->timeout_seconds = 30;
  }
  float sync = 1;
  EXPECT_OK(comm->all_reduce("dp", &sync, 1, ReduceOp::Sum));
  if (me == 2) {
    std::vector<float> big(size_t(n), 0.0f);
    EXPECT_OK(comm->recv(0, 1234, big.data(), n * 4));
    EXPECT_EQ(big[0], 1.5f);
    EXPECT_EQ(big[size_t(n - 1)], 1.5f);
  }
  EXPECT_OK(comm->flush());
  EXPECT_EQ(bytes_of(*comm, "send"), me == 0 ? n * 4 : 0);
}

// ------------------------------------------------------------------ the control plane

/// The group's communicator built with plain MPI (color: the group's lowest rank; key: world
/// rank, as the Communicator orders members).
MPI_Comm plain_group_comm(const plan::Mesh &m, const std::string &group) {
  const std::vector<int> members = members_of(m, world_rank(), group);
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, members.front(), world_rank(), &c);
  return c;
}

/// Doubles whose sum depends on the order of the additions (magnitudes 2^-20 .. 2^40).
std::vector<double> wild_doubles(std::mt19937_64 &gen, int64_t n) {
  std::uniform_real_distribution<double> u(-0.3, 1.0);
  std::uniform_int_distribution<int> e(-20, 40);
  std::vector<double> v(static_cast<size_t>(n));
  for (double &x : v) x = std::ldexp(u(gen), e(gen));
  return v;
}

TEST(ControlPlane, SameResultsAsPlainMpiAndNoBytesCounted) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  for (const plan::Mesh &m : kMeshes) {
    SCOPED_TRACE("mesh " + mesh_str(m));
    auto comm = make_comm(m);
    ASSERT_TRUE(comm);
    std::mt19937_64 gen(uint64_t(1000 + me));
    for (const std::string &group : kGroups) {
      SCOPED_TRACE("group '" + group + "'");
      const std::vector<int> members = members_of(m, me, group);
      const int g = int(members.size());
      const int index = int(std::find(members.begin(), members.end(), me) - members.begin());
      MPI_Comm plain = plain_group_comm(m, group);
      EXPECT_OK(comm->barrier(group));
      // all_reduce_f64: the bits of MPI_Allreduce(MPI_DOUBLE) over the same ranks.
      for (int64_t n : {1, 2, 5}) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
          std::vector<double> mine = wild_doubles(gen, n), got = mine, want(static_cast<size_t>(n));
          MPI_Allreduce(mine.data(), want.data(), int(n), MPI_DOUBLE, op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, plain);
          EXPECT_OK(comm->all_reduce_f64(group, got.data(), n, op));
          EXPECT_EQ(std::memcmp(got.data(), want.data(), size_t(n) * 8), 0) << "n " << n;
        }
      }
      // gather_f64 to group index 0: MPI_Gather's rows.
      {
        const int64_t n = 3;
        std::vector<double> mine = wild_doubles(gen, n), got(size_t(n * g), -1.0), want(size_t(n * g), -1.0);
        MPI_Gather(mine.data(), int(n), MPI_DOUBLE, want.data(), int(n), MPI_DOUBLE, 0, plain);
        EXPECT_OK(comm->gather_f64(group, mine.data(), n, index == 0 ? got.data() : nullptr));
        if (index == 0) EXPECT_EQ(got, want);
      }
      // broadcast_bytes from every group index.
      for (int root = 0; root < g; ++root) {
        char msg[13];
        for (int i = 0; i < 13; ++i) msg[i] = char(index == root ? 'a' + (root * 5 + i) % 26 : '?');
        EXPECT_OK(comm->broadcast_bytes(group, msg, 13, root));
        for (int i = 0; i < 13; ++i) EXPECT_EQ(msg[i], char('a' + (root * 5 + i) % 26)) << "root " << root;
      }
      MPI_Comm_free(&plain);
    }
    EXPECT_TRUE(comm->bytes_sent().empty());
  }
}

TEST(ControlPlane, LossSumBitsEqualMpiAllreduceOnTheWorld) {
  REQUIRE_WORLD_4();
  // The training loss: one double per rank, summed over the world ("dp,tp,pp"), many times.
  auto comm = make_comm({2, 2, 1});
  ASSERT_TRUE(comm);
  std::mt19937_64 gen(uint64_t(77 + world_rank()));
  int differ = 0;
  for (int it = 0; it < 300; ++it) {
    const double local = wild_doubles(gen, 1)[0];
    double want = 0, got = local;
    MPI_Allreduce(&local, &want, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_OK(comm->all_reduce_f64("dp,tp,pp", &got, 1, ReduceOp::Sum));
    differ += std::memcmp(&got, &want, 8) != 0;
  }
  EXPECT_EQ(differ, 0);
  EXPECT_TRUE(comm->bytes_sent().empty());
}

TEST(ControlPlane, SendRecvControlApartFromData) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({1, 4, 1});
  ASSERT_TRUE(comm);
  // A ring of synchronous sends: even ranks send first, odd ranks receive first.
  const int next = (me + 1) % 4, prev = (me + 3) % 4;
  const int64_t n = int64_t(1) << 20;  // 4 MiB: past any eager limit
  std::vector<float> out(size_t(n), float(me) + 0.25f), in(size_t(n), -1.0f);
  if (me % 2 == 0) {
    EXPECT_OK(comm->send_control(next, 7, out.data(), n * 4));
    EXPECT_OK(comm->recv_control(prev, 7, in.data(), n * 4));
  } else {
    EXPECT_OK(comm->recv_control(prev, 7, in.data(), n * 4));
    EXPECT_OK(comm->send_control(next, 7, out.data(), n * 4));
  }
  EXPECT_EQ(in[0], float(prev) + 0.25f);
  EXPECT_EQ(in[size_t(n - 1)], float(prev) + 0.25f);
  // Same peer and tag on both planes: each message arrives on its own plane.
  if (me == 0) {
    const float data_msg = 1.0f, control_msg = 2.0f;
    EXPECT_OK(comm->send(1, 5, &data_msg, 4));
    EXPECT_OK(comm->send_control(1, 5, &control_msg, 4));
  } else if (me == 1) {
    float a = 0, b = 0;
    EXPECT_OK(comm->recv_control(0, 5, &b, 4));
    EXPECT_OK(comm->recv(0, 5, &a, 4));
    EXPECT_EQ(a, 1.0f);
    EXPECT_EQ(b, 2.0f);
  }
  EXPECT_OK(comm->flush());
  EXPECT_EQ(bytes_of(*comm, "send"), me == 0 ? 4 : 0);  // the data message only
  // Bad arguments are errors, not hangs.
  float x = 0;
  Status self = comm->send_control(me, 1, &x, 4);
  EXPECT_NE(self.message().find("itself"), std::string::npos) << self.message();
  EXPECT_FALSE(comm->recv_control(4, 1, &x, 4).is_ok());
  EXPECT_FALSE(comm->barrier("dp,zz").is_ok());
}

/// Seconds `f` took.
template <class F> double timed(F &&f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Rank 3 does not join a control collective: ranks 0-2 fail after the timeout with an error
// naming rank 3, and the group's control plane then fails at once. Rank 3 joins late (after a
// data-plane signal sent once all of them gave up), which completes what the others abandoned:
// nothing is left pending.
void check_control_timeout(const char *op, const std::function<Status(Communicator &)> &call) {
  const int me = world_rank();
  auto comm = make_comm({4, 1, 1});
  ASSERT_TRUE(comm);
  float sync = 1;
  EXPECT_OK(comm->all_reduce("dp", &sync, 1, ReduceOp::Sum));  // start together
  if (me != 3) {
    comm->timeout_seconds = 1.0;
    Status s;
    const double secs = timed([&] { s = call(*comm); });
    ASSERT_FALSE(s.is_ok());
    EXPECT_GE(secs, 0.95);
    EXPECT_LT(secs, 6.0);
    for (std::string part : {std::string("rank ") + std::to_string(me) + ": ",
                             std::string(op) + " over group 'dp,tp,pp' (ranks 0,1,2,3)",
                             std::string("did not complete within 1 s: rank(s) 3 did not arrive")})
      EXPECT_NE(s.message().find(part), std::string::npos) << part << " in: " << s.message();
    Status again = call(*comm);
    EXPECT_FALSE(again.is_ok());
    EXPECT_NE(again.message().find("timed out (rank(s) 3 did not arrive)"), std::string::npos) << again.message();
    comm->timeout_seconds = 30;
    // Rank 3 may join only once ranks 0-2 have all given up (else a slow one sees it arrive).
    const int go = 1;
    if (me == 0) {
      for (int r = 1; r < 3; ++r) {
        int gave_up = 0;
        EXPECT_OK(comm->recv(r, 59, &gave_up, 4));
      }
      EXPECT_OK(comm->send(3, 60, &go, 4));
    } else {
      EXPECT_OK(comm->send(0, 59, &go, 4));
    }
    int done = 0;
    EXPECT_OK(comm->recv(3, 61, &done, 4));  // polling drives the abandoned collective
  } else {
    int go = 0;
    EXPECT_OK(comm->recv(0, 60, &go, 4));
    EXPECT_OK(call(*comm));  // late: the others' tokens and collective are waiting
    const int done = 1;
    for (int r = 0; r < 3; ++r) EXPECT_OK(comm->send(r, 61, &done, 4));
  }
  EXPECT_OK(comm->flush());
  sync = 1;
  EXPECT_OK(comm->all_reduce("dp", &sync, 1, ReduceOp::Sum));
  EXPECT_EQ(sync, 4.0f);
}

TEST(ControlPlane, BarrierTimeoutNamesTheMissingRank) {
  REQUIRE_WORLD_4();
  check_control_timeout("barrier", [](Communicator &c) { return c.barrier("dp,tp,pp"); });
}

TEST(ControlPlane, AllReduceF64TimeoutNamesTheMissingRank) {
  REQUIRE_WORLD_4();
  check_control_timeout("all_reduce_f64", [](Communicator &c) {
    double x = 1.5;
    Status s = c.all_reduce_f64("dp,tp,pp", &x, 1, ReduceOp::Sum);
    if (s.is_ok() && x != 6.0) return Status::error("late all_reduce_f64 gave " + std::to_string(x));
    return s;
  });
}

TEST(ControlPlane, GatherAndBroadcastTimeoutNameTheMissingRank) {
  REQUIRE_WORLD_4();
  check_control_timeout("gather_f64", [](Communicator &c) {
    double mine = 1, all[4];
    return c.gather_f64("dp,tp,pp", &mine, 1, all);
  });
  check_control_timeout("broadcast_bytes", [](Communicator &c) {
    long long pid = world_rank() == 0 ? 4242 : 0;
    Status s = c.broadcast_bytes("dp,tp,pp", &pid, sizeof pid, 0);
    if (s.is_ok() && pid != 4242) return Status::error("late broadcast_bytes gave " + std::to_string(pid));
    return s;
  });
}

TEST(ControlPlane, RecvAndSendControlTimeoutNameThePeer) {
  REQUIRE_WORLD_4();
  const int me = world_rank();
  auto comm = make_comm({4, 1, 1});
  ASSERT_TRUE(comm);
  if (me == 1) {
    comm->timeout_seconds = 0.5;
    float buf[4];
    Status s;
    const double secs = timed([&] { s = comm->recv_control(3, 77, buf, 16); });
    ASSERT_FALSE(s.is_ok());
    EXPECT_GE(secs, 0.45);
    EXPECT_LT(secs, 6.0);
    for (const char *part : {"rank 1:", "recv_control from rank 3", "tag 77", "16 bytes", "0.5 s"})
      EXPECT_NE(s.message().find(part), std::string::npos) << part << " in: " << s.message();
    comm->timeout_seconds = 30;
  }
  if (me == 0) {
    comm->timeout_seconds = 0.5;
    const float msg[2] = {1, 2};
    Status s;
    const double secs = timed([&] { s = comm->send_control(2, 88, msg, 8); });
    ASSERT_FALSE(s.is_ok());  // synchronous: rank 2 never receives it in time
    EXPECT_GE(secs, 0.45);
    EXPECT_LT(secs, 6.0);
    for (const char *part : {"rank 0:", "send_control to rank 2", "tag 88", "not received within 0.5 s",
                             "rank 2 did not arrive"})
      EXPECT_NE(s.message().find(part), std::string::npos) << part << " in: " << s.message();
    comm->timeout_seconds = 30;
  }
  float sync = 1;
  EXPECT_OK(comm->all_reduce("dp", &sync, 1, ReduceOp::Sum));
  // Rank 3 now really sends with that tag: the cancelled receive did not swallow it.
  if (me == 3) {
    const float msg[4] = {42, 43, 44, 45};
    EXPECT_OK(comm->send_control(1, 77, msg, 16));
  } else if (me == 1) {
    float buf[4] = {0, 0, 0, 0};
    EXPECT_OK(comm->recv_control(3, 77, buf, 16));
    EXPECT_EQ(buf[0], 42.0f);
    EXPECT_EQ(buf[3], 45.0f);
  } else if (me == 2) {
    // The abandoned send may or may not have been cancelled (MPI need not cancel sends): take
    // it if it is still there, so that nothing stays pending.
    comm->timeout_seconds = 0.5;
    float buf[2] = {0, 0};
    if (comm->recv_control(0, 88, buf, 8).is_ok()) EXPECT_EQ(buf[1], 2.0f);
    comm->timeout_seconds = 30;
  }
  sync = 1;
  EXPECT_OK(comm->all_reduce("dp", &sync, 1, ReduceOp::Sum));
  EXPECT_EQ(sync, 4.0f);
  EXPECT_EQ(bytes_of(*comm, "send"), 0);
}

TEST(ControlPlane, LocalCommunicatorIsTheIdentity) {
  auto comm = make_local_communicator();
  for (const std::string &g : kGroups) {
    EXPECT_OK(comm->barrier(g));
    double x[2] = {1.5, -2};
    EXPECT_OK(comm->all_reduce_f64(g, x, 2, ReduceOp::Sum));
    EXPECT_EQ(x[0], 1.5);
    double all[2] = {0, 0};
    EXPECT_OK(comm->gather_f64(g, x, 2, all));
    EXPECT_EQ(all[1], -2.0);
    long long pid = 7;
    EXPECT_OK(comm->broadcast_bytes(g, &pid, sizeof pid, 0));
    EXPECT_FALSE(comm->broadcast_bytes(g, &pid, sizeof pid, 1).is_ok());
  }
  EXPECT_FALSE(comm->barrier("zz").is_ok());
  float f = 0;
  EXPECT_FALSE(comm->send_control(0, 0, &f, 4).is_ok());
  EXPECT_FALSE(comm->recv_control(0, 0, &f, 4).is_ok());
  EXPECT_TRUE(comm->bytes_sent().empty());
}

// ------------------------------------------------------------------ the local communicator

TEST(Comm, LocalCommunicator) {
  auto comm = make_local_communicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);
  EXPECT_EQ(comm->mesh().size(), 1);
  for (const std::string &g : kGroups) {
    EXPECT_EQ(*comm->group_size(g), 1);
    float x[3] = {1, -2, 3};
    EXPECT_OK(comm->all_reduce(g, x, 3, ReduceOp::Sum));
    EXPECT_OK(comm->all_reduce(g, x, 3, ReduceOp::Max));
    EXPECT_EQ(x[1], -2.0f);
  }
  EXPECT_FALSE(comm->group_size("zz").is_ok());
  EXPECT_FALSE(comm->all_reduce("zz", nullptr, 0, ReduceOp::Sum).is_ok());
  float x = 1;
  EXPECT_FALSE(comm->send(0, 0, &x, 4).is_ok());
  EXPECT_FALSE(comm->recv(0, 0, &x, 4).is_ok());
  EXPECT_OK(comm->flush());
  EXPECT_EQ(bytes_of(*comm, "all_reduce"), 0);
  Buf b = zeros({4}, 2.0f);
  EXPECT_OK(run("all_reduce", {&b}, {&b}, {{"group", std::string("dp,tp")}, {"scale", 0.5}},
                comm.get()));
  EXPECT_EQ(b.f[0], 1.0f);
}

// ------------------------------------------------------------------ vocabulary parallel

struct VocabCase {
  int64_t B = 2, T = 5, Vs = 7, D = 6;
};

void check_vocab_parallel(const plan::Mesh &m) {
  const int me = world_rank();
  auto comm = make_comm(m);
  ASSERT_TRUE(comm);
  const int g = m.tp, c = comm->coord("tp");
  VocabCase vc;
  const int64_t B = vc.B, T = vc.T, Vs = vc.Vs, D = vc.D, V = Vs * g, N = B * T;
  Rng rng(1234);  // the same numbers on every rank
  Buf table = rng.buf({V, D});
  Buf logits = rng.buf({B, T, V}, -4.0f, 4.0f);
  std::vector<int32_t> id_v(static_cast<size_t>(N)), lab_v(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    id_v[size_t(i)] = int32_t((i * 5 + 3) % V);
    lab_v[size_t(i)] = (i % 4 == 1) ? -100 : int32_t((i * 11 + 2) % V);
  }
  Buf ids = ints({B, T}, id_v), labels = ints({B, T}, lab_v);
  Buf shard = zeros({Vs, D});
  std::copy(table.f.begin() + c * Vs * D, table.f.begin() + (c + 1) * Vs * D, shard.f.begin());
  Buf lshard = zeros({B, T, Vs});
  lshard.f = columns(logits.f, N, V, c * Vs, Vs);
  const Attrs vg = {{"vocab_group", std::string("tp")}};

  // Embedding: the partial sums add up to the unsharded lookup.
  Buf y_full = zeros({B, T, D}), y = zeros({B, T, D}, 9.0f);
  EXPECT_OK(run("embedding_fwd", {&ids, &table}, {&y_full}, {}, nullptr));
  EXPECT_OK(run("embedding_fwd", {&ids, &shard}, {&y}, vg, comm.get()));
  EXPECT_OK(comm->all_reduce("tp", y.f.data(), N * D, ReduceOp::Sum));
  EXPECT_LE(max_abs_diff(y.f, y_full.f), 1e-6f);
  Buf bad_ids = ints({1, 2}, {0, int32_t(V)});
  Buf y_bad = zeros({1, 2, D});
  Status s = run("embedding_fwd", {&bad_ids, &shard}, {&y_bad}, vg, comm.get());
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("token id " + std::to_string(V)), std::string::npos) << s.message();
  EXPECT_FALSE(run("embedding_fwd", {&ids, &shard}, {&y_full}, vg, nullptr).is_ok());

  for (int64_t shift : {0, 1}) {
    SCOPED_TRACE("shift " + std::to_string(shift));
    const Attrs ce = {{"shift", shift}, {"grad_scale", 0.75}};
    Attrs ce_v = ce;
    ce_v["vocab_group"] = std::string("tp");
    // Forward: one max of N, one sum of 2N.
    Buf loss_full = zeros({}), loss = zeros({});
    EXPECT_OK(run("cross_entropy_fwd", {&logits, &labels}, {&loss_full}, ce, nullptr));
    comm->reset_bytes();
    EXPECT_OK(run("cross_entropy_fwd", {&lshard, &labels}, {&loss}, ce_v, comm.get()));
    EXPECT_EQ(bytes_of(*comm, "all_reduce"),
              all_reduce_bytes_sent(N * 4, g) + all_reduce_bytes_sent(2 * N * 4, g));
    EXPECT_NEAR(loss.f[0], loss_full.f[0], 1e-6) << "loss " << loss_full.f[0];
    // Backward: one max of N, one sum of N.
    Buf dl_full = zeros({B, T, V}), dl = zeros({B, T, Vs}, 5.0f);
    EXPECT_OK(run("cross_entropy_bwd", {&logits, &labels}, {&dl_full}, ce, nullptr));
    comm->reset_bytes();
    EXPECT_OK(run("cross_entropy_bwd", {&lshard, &labels}, {&dl}, ce_v, comm.get()));
    EXPECT_EQ(bytes_of(*comm, "all_reduce"), 2 * all_reduce_bytes_sent(N * 4, g));
    EXPECT_LE(max_abs_diff(dl.f, columns(dl_full.f, N, V, c * Vs, Vs)), 1e-6f);
  }
  // A label of another shard is fine, one past the whole vocabulary is not.
  Buf bad_labels = ints({B, T}, lab_v);
  bad_labels.i[3] = int32_t(V);
  Buf loss = zeros({});
  s = run("cross_entropy_fwd", {&lshard, &bad_labels}, {&loss},
          {{"shift", int64_t(0)}, {"vocab_group", std::string("tp")}}, comm.get());
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("label " + std::to_string(V)), std::string::npos) << s.message();
  EXPECT_OK(comm->flush());
  (void)me;
}

TEST(VocabParallel, EmbeddingAndCrossEntropyTp4) {
  REQUIRE_WORLD_4();
  check_vocab_parallel({1, 4, 1});
}

TEST(VocabParallel, EmbeddingAndCrossEntropyTp2Dp2) {
  REQUIRE_WORLD_4();
  check_vocab_parallel({2, 2, 1});
}

/// With a group of one rank (local communicator, or "" without one) the kernels are the
/// unsharded ones, bit for bit; a named group without a communicator is an error.
TEST(VocabParallel, GroupOfOneIsUnsharded) {
  auto local = make_local_communicator();
  Rng rng(99);
  const int64_t B = 2, T = 4, V = 9, D = 3;
  Buf table = rng.buf({V, D}), logits = rng.buf({B, T, V}, -3, 3);
  Buf ids = ints({B, T}, {0, 8, 3, 4, 5, 1, 2, 7});
  Buf labels = ints({B, T}, {1, -100, 8, 0, 2, 2, 6, 5});
  for (Communicator *comm : {local.get(), static_cast<Communicator *>(nullptr)}) {
    const std::string grp = comm ? "tp" : "";
    const Attrs vg = {{"vocab_group", grp}};
    Buf y0 = zeros({B, T, D}), y1 = zeros({B, T, D});
    EXPECT_OK(run("embedding_fwd", {&ids, &table}, {&y0}, {}, nullptr));
    EXPECT_OK(run("embedding_fwd", {&ids, &table}, {&y1}, vg, comm));
    EXPECT_EQ(y0.f, y1.f);
    const Attrs ce = {{"shift", int64_t(1)}};
    Attrs ce_v = ce;
    ce_v["vocab_group"] = grp;
    Buf l0 = zeros({}), l1 = zeros({});
    EXPECT_OK(run("cross_entropy_fwd", {&logits, &labels}, {&l0}, ce, nullptr));
    EXPECT_OK(run("cross_entropy_fwd", {&logits, &labels}, {&l1}, ce_v, comm));
    EXPECT_EQ(l0.f, l1.f);
    Buf d0 = zeros({B, T, V}), d1 = zeros({B, T, V});
    EXPECT_OK(run("cross_entropy_bwd", {&logits, &labels}, {&d0}, ce, nullptr));
    EXPECT_OK(run("cross_entropy_bwd", {&logits, &labels}, {&d1}, ce_v, comm));
    EXPECT_EQ(d0.f, d1.f);
  }
  Buf y = zeros({B, T, D});
  Status s = run("embedding_fwd", {&ids, &table}, {&y}, {{"vocab_group", std::string("tp")}},
                 nullptr);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("communicator"), std::string::npos) << s.message();
  Buf l = zeros({});
  EXPECT_FALSE(run("cross_entropy_fwd", {&logits, &labels}, {&l},
                   {{"shift", int64_t(0)}, {"vocab_group", std::string("tp")}}, nullptr)
                   .is_ok());
  EXPECT_FALSE(run("cross_entropy_fwd", {&logits, &labels}, {&l},
                   {{"shift", int64_t(0)}, {"vocab_group", std::string("qp")}}, local.get())
                   .is_ok());
}

// ------------------------------------------------------------------ adamw norm_group

struct AdamState {
  Buf p0, p1, g0, g1, m0, m1, v0, v1;
};

AdamState adam_full(int64_t rows, int64_t cols, int64_t n1) {
  Rng rng(777);
  AdamState s;
  s.p0 = rng.buf({rows, cols});
  s.p1 = rng.buf({n1});
  s.g0 = rng.buf({rows, cols}, -2, 2);
  s.g1 = rng.buf({n1}, -2, 2);
  s.m0 = rng.buf({rows, cols}, -0.1f, 0.1f);
  s.m1 = rng.buf({n1}, -0.1f, 0.1f);
  s.v0 = rng.buf({rows, cols}, 0.0f, 0.01f);
  s.v1 = rng.buf({n1}, 0.0f, 0.01f);
  return s;
}

Buf row_slice(const Buf &b, int64_t r0, int64_t nrows) {
  const int64_t cols = b.shape[1];
  Buf out = zeros({nrows, cols});
  std::copy(b.f.begin() + r0 * cols, b.f.begin() + (r0 + nrows) * cols, out.f.begin());
  return out;
}

/// p0 (rows, cols) is split by rows over tp (replicated over dp); p1 is replicated everywhere.
void check_adamw_norm_group(const plan::Mesh &m, const std::string &group) {
  auto comm = make_comm(m);
  ASSERT_TRUE(comm);
  const int tp = m.tp, c = comm->coord("tp");
  const int64_t rows = 8, cols = 3, n1 = 5;
  const int gsize = *comm->group_size(group);
  // Ranks of the group holding the same copy: p0's shard is shared by the group's dp peers.
  const int64_t div0 = group.find("dp") != std::string::npos ? m.dp : 1;
  const int64_t div1 = gsize;
  Attrs attrs = {{"n", int64_t(2)},          {"beta1", 0.9},         {"beta2", 0.99},
                 {"eps", 1e-8},              {"weight_decay", 0.01}, {"max_grad_norm", 0.5},
                 {"zero_grads", int64_t(0)}};
  AdamState full = adam_full(rows, cols, n1);
  StepState st_full;
  st_full.step = 3;
  st_full.lr = 1e-2;
  EXPECT_OK(run("adamw_step",
                {&full.p0, &full.p1, &full.g0, &full.g1, &full.m0, &full.m1, &full.v0, &full.v1},
                {}, attrs, nullptr, &st_full));

  AdamState mine = adam_full(rows, cols, n1);
  const int64_t r0 = c * (rows / tp), nr = rows / tp;
  Buf p0 = row_slice(mine.p0, r0, nr), g0 = row_slice(mine.g0, r0, nr),
      m0 = row_slice(mine.m0, r0, nr), v0 = row_slice(mine.v0, r0, nr);
  Attrs sharded = attrs;
  sharded["norm_group"] = group;
  sharded["norm_divisors"] = std::vector<int64_t>{div0, div1};
  StepState st;
  st.step = 3;
  st.lr = 1e-2;
  comm->reset_bytes();
  EXPECT_OK(run("adamw_step", {&p0, &mine.p1, &g0, &mine.g1, &m0, &mine.m1, &v0, &mine.v1}, {},
                sharded, comm.get(), &st));
  EXPECT_EQ(bytes_of(*comm, "all_reduce"), all_reduce_bytes_sent(4, gsize));
  EXPECT_TRUE(st.grad_norm_finite);
  EXPECT_NEAR(st.grad_norm, st_full.grad_norm, 1e-6 * st_full.grad_norm);
  EXPECT_GT(st_full.grad_norm, 0.5);  // the clip was active
  EXPECT_LE(max_abs_diff(p0.f, row_slice(full.p0, r0, nr).f), 1e-6f);
  EXPECT_LE(max_abs_diff(m0.f, row_slice(full.m0, r0, nr).f), 1e-6f);
  EXPECT_LE(max_abs_diff(v0.f, row_slice(full.v0, r0, nr).f), 1e-6f);
  EXPECT_LE(max_abs_diff(g0.f, row_slice(full.g0, r0, nr).f), 1e-6f);  // clipped grads
  EXPECT_LE(max_abs_diff(mine.p1.f, full.p1.f), 1e-6f);
  EXPECT_LE(max_abs_diff(mine.m1.f, full.m1.f), 1e-6f);
  EXPECT_LE(max_abs_diff(mine.v1.f, full.v1.f), 1e-6f);

  // Bad divisors: wrong count, out of range.
  Attrs bad = sharded;
  bad["norm_divisors"] = std::vector<int64_t>{1};
  EXPECT_FALSE(run("adamw_step", {&p0, &mine.p1, &g0, &mine.g1, &m0, &mine.m1, &v0, &mine.v1},
                   {}, bad, comm.get(), &st)
                   .is_ok());
  bad["norm_divisors"] = std::vector<int64_t>{1, int64_t(gsize + 1)};
  EXPECT_FALSE(run("adamw_step", {&p0, &mine.p1, &g0, &mine.g1, &m0, &mine.m1, &v0, &mine.v1},
                   {}, bad, comm.get(), &st)
                   .is_ok());
}

TEST(AdamwNormGroup, TpShardsEqualUnsharded) {
  REQUIRE_WORLD_4();
  check_adamw_norm_group({1, 4, 1}, "tp");
}

TEST(AdamwNormGroup, DpTpShardsEqualUnsharded) {
  REQUIRE_WORLD_4();
  check_adamw_norm_group({2, 2, 1}, "dp,tp");
}

TEST(AdamwNormGroup, GroupOfOneIsUnsharded) {
  auto local = make_local_communicator();
  Attrs attrs = {{"n", int64_t(2)}, {"beta1", 0.9}, {"beta2", 0.999}, {"eps", 1e-8},
                 {"max_grad_norm", 0.3}, {"zero_grads", int64_t(1)}};
  AdamState a = adam_full(4, 3, 5), b = adam_full(4, 3, 5), d = adam_full(4, 3, 5);
  StepState sa, sb, sd;
  sa.step = sb.step = sd.step = 2;
  sa.lr = sb.lr = sd.lr = 1e-3;
  EXPECT_OK(run("adamw_step", {&a.p0, &a.p1, &a.g0, &a.g1, &a.m0, &a.m1, &a.v0, &a.v1}, {},
                attrs, nullptr, &sa));
  Attrs with = attrs;
  with["norm_group"] = std::string("tp");
  with["norm_divisors"] = std::vector<int64_t>{1, 1};
  EXPECT_OK(run("adamw_step", {&b.p0, &b.p1, &b.g0, &b.g1, &b.m0, &b.m1, &b.v0, &b.v1}, {}, with,
                local.get(), &sb));
  with["norm_group"] = std::string("");
  EXPECT_OK(run("adamw_step", {&d.p0, &d.p1, &d.g0, &d.g1, &d.m0, &d.m1, &d.v0, &d.v1}, {}, with,
                nullptr, &sd));
  EXPECT_EQ(sa.grad_norm, sb.grad_norm);
  EXPECT_EQ(sa.grad_norm, sd.grad_norm);
  for (auto pr : {std::make_pair(&a, &b), std::make_pair(&a, &d)}) {
    EXPECT_EQ(pr.first->p0.f, pr.second->p0.f);
    EXPECT_EQ(pr.first->p1.f, pr.second->p1.f);
    EXPECT_EQ(pr.first->m1.f, pr.second->m1.f);
    EXPECT_EQ(pr.first->v0.f, pr.second->v0.f);
    EXPECT_EQ(pr.first->g0.f, pr.second->g0.f);
  }
  with["norm_group"] = std::string("tp");
  EXPECT_FALSE(run("adamw_step", {&b.p0, &b.p1, &b.g0, &b.g1, &b.m0, &b.m1, &b.v0, &b.v1}, {},
                   with, nullptr, &sb)
                   .is_ok());
}

/// Prints only failed assertions, prefixed with the rank (ranks other than 0).
class FailurePrinter : public ::testing::EmptyTestEventListener {
public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult &r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

private:
  int rank_;
};

} // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = world_rank();
  if (rank != 0) {
    ::testing::TestEventListeners &listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed)
    std::fprintf(stderr, "test_comm: another rank failed (see its [rank N] lines)\n");
  MPI_Finalize();
  return any_failed ? 1 : 0;
}
