// The NCCL communicator (runtime/cuda/nccl_comm.h). Run on 1 MPI rank (own main: MPI_Init).
//   OneRankPerGpu.*: the pure "two ranks of one group on one GPU" check: runs everywhere.
//   NcclFactory.*:   factory errors that need no GPU (world size, no GPU).
//   NcclComm.*:      real NCCL calls on one GPU (a world of 1 with NCCL communicators forced
//                    for one-rank groups); GTEST_SKIP "no usable CUDA GPU: <why>" without one.
#include <mpi.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "runtime/base/bf16.h"
#include "runtime/comm/comm.h"
#include "runtime/cuda/backend.h"
#include "runtime/cuda/nccl_comm.h"

using namespace parallora;
using namespace parallora::rt;
using cuda::CommGroup;
using cuda::RankDevice;

namespace {

bool contains(const std::string &s, const std::string &part) { return s.find(part) != std::string::npos; }

#define SKIP_WITHOUT_GPU()                                                                       \
  do {                                                                                           \
    std::string why_;                                                                            \
    if (!cuda::available(&why_)) GTEST_SKIP() << "no usable CUDA GPU: " << why_;                 \
  } while (0)

// ------------------------------------------------------------------ pure check (CPU)

TEST(OneRankPerGpu, DistinctGpusAreOk) {
  const std::vector<RankDevice> d = {{"h0", "0000:01:00.0"}, {"h0", "0000:02:00.0"}, {"h1", "0000:01:00.0"},
                                     {"h1", "0000:02:00.0"}};
  EXPECT_TRUE(cuda::check_one_rank_per_gpu(d, {{"tp", {0, 1}}, {"tp", {2, 3}}, {"dp", {0, 2}}, {"world", {0, 1, 2, 3}}})
                  .is_ok());
}

TEST(OneRankPerGpu, SameBusIdOnDifferentHostsIsOk) {
  const std::vector<RankDevice> d = {{"h0", "0000:01:00.0"}, {"h1", "0000:01:00.0"}};
  EXPECT_TRUE(cuda::check_one_rank_per_gpu(d, {{"dp", {0, 1}}}).is_ok());
}

TEST(OneRankPerGpu, SharedGpuOutsideAnyGroupIsOk) {
  // Ranks 0 and 1 share a GPU but are never in one communicator; one-rank groups are exempt.
  const std::vector<RankDevice> d = {{"h", "A"}, {"h", "A"}, {"h", "B"}};
  EXPECT_TRUE(cuda::check_one_rank_per_gpu(d, {{"tp", {0, 2}}, {"tp", {1}}, {"", {0}}}).is_ok());
  EXPECT_TRUE(cuda::check_one_rank_per_gpu(d, {}).is_ok());
}

TEST(OneRankPerGpu, SharedGpuInAGroupIsAnErrorNamingEverything) {
  const std::vector<RankDevice> d = {{"node7", "0000:3b:00.0"}, {"node7", "0000:3b:00.0"}};
  const Status s = cuda::check_one_rank_per_gpu(d, {{"tp", {0, 1}}});
  ASSERT_FALSE(s.is_ok());
  const std::string &m = s.message();
  EXPECT_TRUE(contains(m, "NCCL cannot put two ranks of one group on one GPU")) << m;
  EXPECT_TRUE(contains(m, "ranks 0 and 1 of group 'tp'")) << m;
  EXPECT_TRUE(contains(m, "0000:3b:00.0")) << m;
  EXPECT_TRUE(contains(m, "node7")) << m;
  EXPECT_TRUE(contains(m, "--collectives mpi")) << m;
}

TEST(OneRankPerGpu, ReportsTheSmallestViolatedGroup) {
  // 4 ranks on 2 GPUs (ranks 1 and 3 share B): the world, "dp" {1,3} and "tp" {0,1}.
  const std::vector<RankDevice> d = {{"h", "A"}, {"h", "B"}, {"h", "C"}, {"h", "B"}};
  const Status s = cuda::check_one_rank_per_gpu(
      d, {{"world", {0, 1, 2, 3}}, {"tp", {0, 1}}, {"tp", {2, 3}}, {"dp", {1, 3}}});
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "ranks 1 and 3 of group 'dp' (ranks 1,3)")) << s.message();
}

TEST(OneRankPerGpu, RankOutsideTheWorldIsAnError) {
  const std::vector<RankDevice> d = {{"h", "A"}, {"h", "B"}};
  const Status s = cuda::check_one_rank_per_gpu(d, {{"tp", {0, 2}}});
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "names rank 2, outside this world of 2 ranks")) << s.message();
}

// ------------------------------------------------------------------ factory (CPU)

TEST(NcclFactory, WorldSizeMismatchIsTheMpiError) {
  plan::Mesh mesh;
  mesh.dp = 2;
  mesh.tp = 1;
  mesh.pp = 1;
  auto c = cuda::make_nccl_communicator(mesh, 10);
  ASSERT_FALSE(c.is_ok());
  EXPECT_TRUE(contains(c.message(), "this MPI world has 1")) << c.message();
}

TEST(NcclFactory, WithoutAGpuSaysWhyAndPointsToMpi) {
  std::string why;
  if (cuda::available(&why)) GTEST_SKIP() << "a GPU is available";
  auto c = cuda::make_nccl_communicator(plan::Mesh{}, 10);
  ASSERT_FALSE(c.is_ok());
  EXPECT_TRUE(contains(c.message(), "no usable CUDA GPU")) << c.message();
  EXPECT_TRUE(contains(c.message(), "--collectives mpi")) << c.message();
}

TEST(NcclFactory, VersionString) { EXPECT_TRUE(contains(cuda::nccl_version_string(), "NCCL 2.")); }

// ------------------------------------------------------------------ NCCL on one GPU

/// Managed buffer from the backend's allocator (what the executor's tensors are).
struct Managed {
  float *p = nullptr;
  int64_t n = 0;
  explicit Managed(int64_t count) : n(count) {
    p = static_cast<float *>(cuda::memory().alloc(size_t(count) * sizeof(float)));
  }
  ~Managed() { cuda::memory().free(p); }
};

std::unique_ptr<Communicator> one_rank_nccl() {
  auto c = cuda::make_nccl_communicator(plan::Mesh{}, 60, /*single_rank_comms=*/true);
  EXPECT_TRUE(c.is_ok()) << c.message();
  return c.is_ok() ? std::move(*c) : nullptr;
}

TEST(NcclComm, AllReduceSumAndMaxOfOneRankIsIdentity) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);
  const int64_t n = 1 << 20;
  Managed buf(n);
  ASSERT_TRUE(buf.p);
  for (int64_t i = 0; i < n; ++i) buf.p[i] = float(i % 1000) - 500.0f;
  for (const char *group : {"", "dp", "tp", "dp,tp,pp"}) {
    Status s = comm->all_reduce(group, buf.p, n, ReduceOp::Sum);
    ASSERT_TRUE(s.is_ok()) << s.message();
    s = comm->all_reduce(group, buf.p, n, ReduceOp::Max);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(buf.p[i], float(i % 1000) - 500.0f) << i;
  // A world of one sends nothing: the formula gives 0 bytes.
  EXPECT_EQ(comm->bytes_sent().count("all_reduce"), 0u);
}

// bf16 (ncclBfloat16): identity on one rank, managed and host memory; i32 is refused.
TEST(NcclComm, AllReduceBf16) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  const int64_t n = 100003;  // odd: not a multiple of any vector width
  auto *p = static_cast<uint16_t *>(cuda::memory().alloc(size_t(n) * 2));
  ASSERT_TRUE(p);
  for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(float(i % 777) * 0.125f - 40.0f);
  for (const char *group : {"dp", "tp", "dp,tp,pp"}) {
    Status s = comm->all_reduce(group, p, n, plan::ElemType::BF16, ReduceOp::Sum);
    ASSERT_TRUE(s.is_ok()) << s.message();
    s = comm->all_reduce(group, p, n, plan::ElemType::BF16, ReduceOp::Max);
    ASSERT_TRUE(s.is_ok()) << s.message();
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(p[i], f32_to_bf16(float(i % 777) * 0.125f - 40.0f)) << i;
  cuda::memory().free(p);
  uint16_t host[3] = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f), f32_to_bf16(3.25f)};
  Status s = comm->all_reduce("dp", host, 3, plan::ElemType::BF16, ReduceOp::Sum);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(bf16_to_f32(host[0]), 1.5f);
  EXPECT_EQ(bf16_to_f32(host[2]), 3.25f);
  int32_t ints[2] = {1, 2};
  s = comm->all_reduce("dp", ints, 2, plan::ElemType::I32, ReduceOp::Sum);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "i32")) << s.message();
}

TEST(NcclComm, AllReduceOnHostMemoryIsStaged) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  float local[3] = {1.5f, -2.0f, 3.25f};  // like the clipping norm: a host stack value
  Status s = comm->all_reduce("dp", local, 3, ReduceOp::Sum);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(local[0], 1.5f);
  EXPECT_EQ(local[1], -2.0f);
  EXPECT_EQ(local[2], 3.25f);
  std::vector<float> big(100000, 7.0f);
  s = comm->all_reduce("tp", big.data(), int64_t(big.size()), ReduceOp::Max);
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (float v : big) ASSERT_EQ(v, 7.0f);
}

TEST(NcclComm, BadArgumentsAreErrors) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  float x = 0;
  EXPECT_FALSE(comm->all_reduce("xx", &x, 1, ReduceOp::Sum).is_ok());
  EXPECT_FALSE(comm->all_reduce("dp", &x, -1, ReduceOp::Sum).is_ok());
  EXPECT_FALSE(comm->all_reduce("dp", nullptr, 4, ReduceOp::Sum).is_ok());
  const Status self = comm->send(0, 3, &x, 4);
  ASSERT_FALSE(self.is_ok());
  EXPECT_TRUE(contains(self.message(), "own rank")) << self.message();
  EXPECT_FALSE(comm->recv(1, 3, &x, 4).is_ok());  // not a rank of a world of 1
  EXPECT_TRUE(comm->flush().is_ok());
  EXPECT_TRUE(comm->broadcast("dp", &x, 1, 0).is_ok());
  EXPECT_FALSE(comm->broadcast("dp", &x, 1, 1).is_ok());
}

TEST(NcclComm, DefaultWorldOfOneNeedsNoNccl) {
  SKIP_WITHOUT_GPU();
  auto c = cuda::make_nccl_communicator(plan::Mesh{}, 60);
  ASSERT_TRUE(c.is_ok()) << c.message();
  float v[2] = {1, 2};
  EXPECT_TRUE((*c)->all_reduce("dp,tp", v, 2, ReduceOp::Sum).is_ok());
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], 2.0f);
}

// The control plane is the MPI communicator's (host memory, never NCCL, never counted).
TEST(NcclComm, ControlPlaneIsTheMpiOneAndNotCounted) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  for (const char *group : {"", "dp", "dp,tp,pp"}) {
    EXPECT_TRUE(comm->barrier(group).is_ok());
    double loss[2] = {0.1, 2.5};
    EXPECT_TRUE(comm->all_reduce_f64(group, loss, 2, ReduceOp::Sum).is_ok());
    EXPECT_EQ(loss[0], 0.1);
    double all[2] = {0, 0};
    EXPECT_TRUE(comm->gather_f64(group, loss, 2, all).is_ok());
    EXPECT_EQ(all[1], 2.5);
    long long pid = 99;
    EXPECT_TRUE(comm->broadcast_bytes(group, &pid, sizeof pid, 0).is_ok());
    EXPECT_EQ(pid, 99);
  }
  float x = 0;
  Status self = comm->send_control(0, 1, &x, 4);
  EXPECT_TRUE(contains(self.message(), "send_control to rank 0")) << self.message();
  EXPECT_FALSE(comm->recv_control(1, 1, &x, 4).is_ok());  // not a rank of a world of 1
  EXPECT_TRUE(comm->bytes_sent().empty());
}

/// Runs a registry kernel with managed buffers.
Status run_kernel(const KernelRegistry &reg, const std::string &op, std::vector<Tensor> in, std::vector<Tensor> out,
                  std::map<std::string, plan::AttrValue> attrs, Communicator *comm) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = "test." + op;
  KernelCall call;
  call.instr = &instr;
  call.comm = comm;
  call.in = std::move(in);
  call.out = std::move(out);
  const KernelFn *fn = reg.find(op);
  if (!fn) return Status::error("no kernel " + op);
  Status s = (*fn)(call);
  if (!s) return s;
  return cuda::memory().sync();
}

Tensor tensor(const Managed &m) {
  Tensor t;
  t.data = m.p;
  t.shape = {m.n};
  return t;
}

TEST(NcclComm, DeviceAllReduceKernelBucketAndScale) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  KernelRegistry reg;
  cuda::register_kernels(reg);
  cuda::register_nccl_collective_kernels(reg);
  Managed a(1000), b(37), ya(1000), yb(37);
  for (int i = 0; i < 1000; ++i) a.p[i] = float(i);
  for (int i = 0; i < 37; ++i) b.p[i] = -float(i);
  // Bucket of two, scaled.
  Status s = run_kernel(reg, "all_reduce", {tensor(a), tensor(b)}, {tensor(ya), tensor(yb)},
                        {{"group", std::string("dp")}, {"scale", 0.5}}, comm.get());
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(ya.p[i], 0.5f * float(i));
  for (int i = 0; i < 37; ++i) ASSERT_EQ(yb.p[i], -0.5f * float(i));
  // One tensor in place, no scale.
  s = run_kernel(reg, "all_reduce", {tensor(a)}, {tensor(a)}, {{"group", std::string("dp,tp")}}, comm.get());
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.p[i], float(i));
  // Broadcast (ZeRO-1 shape): root 0 of a one-rank group.
  s = run_kernel(reg, "broadcast", {tensor(b)}, {tensor(yb)},
                 {{"group", std::string("dp")}, {"roots", std::vector<int64_t>{0}}}, comm.get());
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (int i = 0; i < 37; ++i) ASSERT_EQ(yb.p[i], -float(i));
  // bf16 bucket, scaled: y = round(scale * x) (one rounding), as the host kernel computes.
  auto *xa = static_cast<uint16_t *>(cuda::memory().alloc(1000 * 2));
  auto *xb = static_cast<uint16_t *>(cuda::memory().alloc(37 * 2));
  auto *za = static_cast<uint16_t *>(cuda::memory().alloc(1000 * 2));
  auto *zb = static_cast<uint16_t *>(cuda::memory().alloc(37 * 2));
  ASSERT_TRUE(xa && xb && za && zb);
  for (int i = 0; i < 1000; ++i) xa[i] = f32_to_bf16(float(i) * 0.37f);
  for (int i = 0; i < 37; ++i) xb[i] = f32_to_bf16(-float(i) * 1.1f);
  auto bt = [](void *p, int64_t n) {
    Tensor t;
    t.data = p;
    t.dtype = plan::ElemType::BF16;
    t.shape = {n};
    return t;
  };
  s = run_kernel(reg, "all_reduce", {bt(xa, 1000), bt(xb, 37)}, {bt(za, 1000), bt(zb, 37)},
                 {{"group", std::string("dp")}, {"scale", 0.3}}, comm.get());
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(za[i], f32_to_bf16(0.3f * bf16_to_f32(xa[i]))) << i;
  for (int i = 0; i < 37; ++i) ASSERT_EQ(zb[i], f32_to_bf16(0.3f * bf16_to_f32(xb[i]))) << i;
  // bf16 and f32 in one bucket: the host kernel's error.
  s = run_kernel(reg, "all_reduce", {bt(xa, 1000), tensor(b)}, {bt(za, 1000), tensor(yb)},
                 {{"group", std::string("dp")}}, comm.get());
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "x_1 is not bf16 like x_0")) << s.message();
  for (void *p : {static_cast<void *>(xa), static_cast<void *>(xb), static_cast<void *>(za), static_cast<void *>(zb)})
    cuda::memory().free(p);
  // Missing group attr: the contract's error.
  s = run_kernel(reg, "all_reduce", {tensor(a)}, {tensor(a)}, {}, comm.get());
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "missing string attr 'group'")) << s.message();
}

// ------------------------------------------------------------------ overlapped buckets

/// Runs a registry kernel with a StepState (all_reduce_start reads last_micro) and no final wait.
Status run_step_kernel(const KernelRegistry &reg, const std::string &op, std::vector<Tensor> in,
                       std::vector<Tensor> out, std::map<std::string, plan::AttrValue> attrs, Communicator *comm,
                       StepState *step) {
  plan::Instr instr;
  instr.op = op;
  instr.attrs = std::move(attrs);
  instr.loc = "test." + op;
  KernelCall call;
  call.instr = &instr;
  call.comm = comm;
  call.step = step;
  call.in = std::move(in);
  call.out = std::move(out);
  const KernelFn *fn = reg.find(op);
  if (!fn) return Status::error("no kernel " + op);
  return (*fn)(call);
}

std::map<std::string, plan::AttrValue> bucket_attrs(int64_t bucket, double scale) {
  return {{"bucket", bucket}, {"group", std::string("dp")}, {"scale", scale}};
}

// The communicator's non-blocking API on device data: start returns at once, wait completes it;
// started() tracks it; a second start before the wait and a wait without a start are errors.
TEST(NcclComm, AllReduceStartWaitApi) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  const int64_t n = 1 << 18;
  Managed a(n), b(n);
  ASSERT_TRUE(a.p && b.p);
  for (int64_t i = 0; i < n; ++i) {
    a.p[i] = float(i % 977) * 0.25f;
    b.p[i] = -float(i % 13);
  }
  Status s = comm->all_reduce_start(3, "dp", a.p, n, plan::ElemType::F32, ReduceOp::Sum);
  ASSERT_TRUE(s.is_ok()) << s.message();
  s = comm->all_reduce_start(7, "dp,tp", b.p, n, plan::ElemType::F32, ReduceOp::Sum);  // two in flight
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_TRUE(comm->started(3));
  EXPECT_TRUE(comm->started(7));
  comm->progress();
  s = comm->all_reduce_start(3, "dp", a.p, n, plan::ElemType::F32, ReduceOp::Sum);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "never waited for")) << s.message();
  ASSERT_TRUE(comm->all_reduce_wait(7).is_ok());  // out of start order
  ASSERT_TRUE(comm->all_reduce_wait(3).is_ok());
  EXPECT_FALSE(comm->started(3));
  ASSERT_TRUE(cuda::memory().sync().is_ok());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(a.p[i], float(i % 977) * 0.25f) << i;
    ASSERT_EQ(b.p[i], -float(i % 13)) << i;
  }
  s = comm->all_reduce_wait(3);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "which was not started")) << s.message();
  // Host data takes the blocking path; the wait still pairs with it.
  float host[2] = {1.5f, -4.0f};
  ASSERT_TRUE(comm->all_reduce_start(1, "dp", host, 2, plan::ElemType::F32, ReduceOp::Sum).is_ok());
  ASSERT_TRUE(comm->all_reduce_wait(1).is_ok());
  EXPECT_EQ(host[0], 1.5f);
  EXPECT_EQ(host[1], -4.0f);
  // i32 is refused like all_reduce.
  s = comm->all_reduce_start(2, "dp", a.p, 4, plan::ElemType::I32, ReduceOp::Sum);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "i32")) << s.message();
  EXPECT_FALSE(comm->started(2));
}

// Device kernels: start (pack on the device, reduce on the comm stream) + wait (unpack with the
// scale) give the bytes of the blocking device all_reduce, f32 and bf16, with two buckets in
// flight; a wait without a start (not the last micro-batch) is the whole all_reduce.
TEST(NcclComm, DeviceBucketKernelsMatchBlockingAllReduce) {
  SKIP_WITHOUT_GPU();
  auto comm = one_rank_nccl();
  ASSERT_TRUE(comm);
  KernelRegistry reg;
  cuda::register_kernels(reg);
  cuda::register_nccl_collective_kernels(reg);
  Managed a(1000), b(37), c(4096), ya(1000), yb(37), yc(4096), ra(1000), rb(37), rc(4096);
  for (int i = 0; i < 1000; ++i) a.p[i] = float(i) * 0.37f - 11.0f;
  for (int i = 0; i < 37; ++i) b.p[i] = -float(i) * 1.3f;
  for (int i = 0; i < 4096; ++i) c.p[i] = float(i % 101) / 7.0f;
  const double scale = 0.3;
  // Reference: the blocking device all_reduce of each bucket.
  ASSERT_TRUE(run_kernel(reg, "all_reduce", {tensor(a), tensor(b)}, {tensor(ra), tensor(rb)},
                         {{"group", std::string("dp")}, {"scale", scale}}, comm.get())
                  .is_ok());
  ASSERT_TRUE(run_kernel(reg, "all_reduce", {tensor(c)}, {tensor(rc)}, {{"group", std::string("dp")}, {"scale", scale}},
                         comm.get())
                  .is_ok());
  const std::map<std::string, int64_t> bytes_before = comm->bytes_sent();
  StepState last;  // last_micro = true
  // Two buckets in flight, waited in plan order.
  Status s = run_step_kernel(reg, "all_reduce_start", {tensor(a), tensor(b)}, {}, bucket_attrs(0, scale), comm.get(),
                             &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  s = run_step_kernel(reg, "all_reduce_start", {tensor(c)}, {}, bucket_attrs(1, scale), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_TRUE(comm->started(0) && comm->started(1));
  s = run_step_kernel(reg, "all_reduce_wait", {tensor(a), tensor(b)}, {tensor(ya), tensor(yb)}, bucket_attrs(0, scale),
                      comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  s = run_step_kernel(reg, "all_reduce_wait", {tensor(c)}, {tensor(yc)}, bucket_attrs(1, scale), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_TRUE(cuda::memory().sync().is_ok());
  EXPECT_EQ(std::memcmp(ya.p, ra.p, 1000 * 4), 0);
  EXPECT_EQ(std::memcmp(yb.p, rb.p, 37 * 4), 0);
  EXPECT_EQ(std::memcmp(yc.p, rc.p, 4096 * 4), 0);
  EXPECT_EQ(comm->bytes_sent(), bytes_before);  // a world of one counts 0 bytes either way
  // Not the last micro-batch: the start does nothing, the wait does the whole all_reduce.
  StepState not_last;
  not_last.last_micro = false;
  std::memset(ya.p, 0, 1000 * 4);
  s = run_step_kernel(reg, "all_reduce_start", {tensor(a), tensor(b)}, {}, bucket_attrs(0, scale), comm.get(),
                      &not_last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_FALSE(comm->started(0));
  s = run_step_kernel(reg, "all_reduce_wait", {tensor(a), tensor(b)}, {tensor(ya), tensor(yb)}, bucket_attrs(0, scale),
                      comm.get(), &not_last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_TRUE(cuda::memory().sync().is_ok());
  EXPECT_EQ(std::memcmp(ya.p, ra.p, 1000 * 4), 0);
  EXPECT_EQ(std::memcmp(yb.p, rb.p, 37 * 4), 0);
  // In place (y = x, the compiler's gradient buckets), scale 1: unchanged on one rank.
  s = run_step_kernel(reg, "all_reduce_start", {tensor(c)}, {}, bucket_attrs(2, 1.0), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  s = run_step_kernel(reg, "all_reduce_wait", {tensor(c)}, {tensor(c)}, bucket_attrs(2, 1.0), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_TRUE(cuda::memory().sync().is_ok());
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(c.p[i], float(i % 101) / 7.0f) << i;
  // bf16 bucket: y = round(scale * x) once, as the blocking kernel.
  auto *xb = static_cast<uint16_t *>(cuda::memory().alloc(333 * 2));
  auto *zb = static_cast<uint16_t *>(cuda::memory().alloc(333 * 2));
  auto *rz = static_cast<uint16_t *>(cuda::memory().alloc(333 * 2));
  ASSERT_TRUE(xb && zb && rz);
  for (int i = 0; i < 333; ++i) xb[i] = f32_to_bf16(float(i) * 0.77f - 100.0f);
  auto bt = [](void *p, int64_t n) {
    Tensor t;
    t.data = p;
    t.dtype = plan::ElemType::BF16;
    t.shape = {n};
    return t;
  };
  ASSERT_TRUE(run_kernel(reg, "all_reduce", {bt(xb, 333)}, {bt(rz, 333)}, {{"group", std::string("dp")}, {"scale", scale}},
                         comm.get())
                  .is_ok());
  s = run_step_kernel(reg, "all_reduce_start", {bt(xb, 333)}, {}, bucket_attrs(4, scale), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  s = run_step_kernel(reg, "all_reduce_wait", {bt(xb, 333)}, {bt(zb, 333)}, bucket_attrs(4, scale), comm.get(), &last);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_TRUE(cuda::memory().sync().is_ok());
  EXPECT_EQ(std::memcmp(zb, rz, 333 * 2), 0);
  for (int i = 0; i < 333; ++i) ASSERT_EQ(zb[i], f32_to_bf16(0.3f * bf16_to_f32(xb[i]))) << i;
  for (void *p : {static_cast<void *>(xb), static_cast<void *>(zb), static_cast<void *>(rz)}) cuda::memory().free(p);
  // Operand errors: the host kernels' messages.
  s = run_step_kernel(reg, "all_reduce_start", {tensor(a)}, {tensor(ya)}, bucket_attrs(5, 1.0), comm.get(), &last);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "expected no outputs")) << s.message();
  s = run_step_kernel(reg, "all_reduce_start", {tensor(a)}, {}, {{"group", std::string("dp")}}, comm.get(), &last);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "missing integer attr 'bucket'")) << s.message();
  // A bucket whose wait lists other tensors than its start.
  ASSERT_TRUE(run_step_kernel(reg, "all_reduce_start", {tensor(a)}, {}, bucket_attrs(6, 1.0), comm.get(), &last).is_ok());
  s = run_step_kernel(reg, "all_reduce_wait", {tensor(b)}, {tensor(yb)}, bucket_attrs(6, 1.0), comm.get(), &last);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(contains(s.message(), "but its start staged")) << s.message();
  EXPECT_FALSE(comm->started(6));  // completed anyway: nothing left in flight
}

} // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  MPI_Finalize();
  return rc;
}
