//===- comm.cpp - Communicator base helpers and the one-rank communicator --===//
#include "runtime/comm/comm.h"

#include <algorithm>
#include <cstdio>

#include "runtime/comm/comm_impl.h"

namespace parallora::rt {

namespace comm_detail {

StatusOr<unsigned> parse_group(const std::string &group) {
  unsigned axes = 0;
  size_t pos = 0;
  std::string trimmed;
  for (char ch : group)
    if (ch != ' ' && ch != '\t') trimmed += ch;
  if (trimmed.empty()) return axes;
  while (pos <= trimmed.size()) {
    size_t end = trimmed.find(',', pos);
    if (end == std::string::npos) end = trimmed.size();
    const std::string axis = trimmed.substr(pos, end - pos);
    unsigned bit = 0;
    if (axis == "dp")
      bit = kDp;
    else if (axis == "tp")
      bit = kTp;
    else if (axis == "pp")
      bit = kPp;
    else
      return Status::error("group '" + group + "': unknown mesh axis '" + axis +
                           "' (expected a comma list of dp, tp, pp)");
    if (axes & bit)
      return Status::error("group '" + group + "': mesh axis '" + axis + "' named twice");
    axes |= bit;
    pos = end + 1;
  }
  return axes;
}

std::string group_name(unsigned axes) {
  std::string s;
  auto add = [&](const char *a) {
    if (!s.empty()) s += ',';
    s += a;
  };
  if (axes & kDp) add("dp");
  if (axes & kTp) add("tp");
  if (axes & kPp) add("pp");
  return s;
}

int group_size(const plan::Mesh &mesh, unsigned axes) {
  int g = 1;
  if (axes & kDp) g *= mesh.dp;
  if (axes & kTp) g *= mesh.tp;
  if (axes & kPp) g *= mesh.pp;
  return g;
}

std::vector<int> group_members(const plan::Mesh &mesh, int rank, unsigned axes) {
  const plan::MeshCoord me = plan::coord_of(mesh, rank);
  std::vector<int> out;
  for (int r = 0; r < mesh.size(); ++r) {
    const plan::MeshCoord c = plan::coord_of(mesh, r);
    if (!(axes & kDp) && c.dp != me.dp) continue;
    if (!(axes & kTp) && c.tp != me.tp) continue;
    if (!(axes & kPp) && c.pp != me.pp) continue;
    out.push_back(r);
  }
  return out;  // ascending by construction
}

std::string rank_list(const std::vector<int> &ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i == 16) {
      s += ",...";
      break;
    }
    if (i) s += ',';
    s += std::to_string(ranks[i]);
  }
  return s;
}

std::string seconds_str(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

std::string send_desc(int peer, int tag, int64_t bytes) {
  return "send to rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ") of " + std::to_string(bytes) +
         " bytes";
}

} // namespace comm_detail

using namespace comm_detail;

int Communicator::coord(const std::string &axis) const {
  const plan::MeshCoord c = coord();
  if (axis == "dp") return c.dp;
  if (axis == "tp") return c.tp;
  if (axis == "pp") return c.pp;
  return -1;
}

StatusOr<int> Communicator::group_size(const std::string &group) const {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return axes.status();
  return comm_detail::group_size(mesh_, *axes);
}

StatusOr<std::vector<int>> Communicator::group_ranks(const std::string &group) const {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return axes.status();
  return group_members(mesh_, rank(), *axes);
}

StatusOr<int> Communicator::group_rank(const std::string &group) const {
  StatusOr<std::vector<int>> members = group_ranks(group);
  if (!members) return members.status();
  const auto it = std::find(members->begin(), members->end(), rank());
  return int(it - members->begin());
}

Status Communicator::broadcast(const std::string &group, float *, int64_t, int root) {
  StatusOr<int> g = group_size(group);
  if (!g) return Status::error("broadcast: " + g.message());
  if (root < 0 || root >= *g)
    return Status::error("broadcast over group '" + group + "': root " + std::to_string(root) + " is not in [0, " +
                         std::to_string(*g) + ")");
  if (*g == 1) return Status::ok();
  return Status::error("broadcast over group '" + group + "' of " + std::to_string(*g) +
                       " ranks is not supported by this communicator");
}

// Control plane defaults: every group of one rank is the identity; larger groups and peers are
// refused (only the MPI communicator, and the NCCL one through it, has them).
namespace {

std::string rank_prefix(const Communicator &c) { return "rank " + std::to_string(c.rank()) + ": "; }

/// The group's size, or an error naming `op` and the group; a group of several ranks is refused.
Status one_rank_group(const Communicator &c, const char *op, const std::string &group, int *size) {
  StatusOr<int> g = c.group_size(group);
  if (!g) return Status::error(rank_prefix(c) + op + ": " + g.message());
  *size = *g;
  if (*g == 1) return Status::ok();
  return Status::error(rank_prefix(c) + op + " over group '" + group + "' of " + std::to_string(*g) +
                       " ranks is not supported by this communicator");
}

Status no_peers(const Communicator &c, const char *op, int peer, int tag, int64_t bytes) {
  return Status::error(rank_prefix(c) + op + (op[0] == 's' ? " to rank " : " from rank ") + std::to_string(peer) +
                       " (tag " + std::to_string(tag) + ") of " + std::to_string(bytes) +
                       " bytes: this communicator has no peers (a single-rank run)");
}

} // namespace

Status Communicator::barrier(const std::string &group) {
  int g = 1;
  return one_rank_group(*this, "barrier", group, &g);
}

Status Communicator::all_reduce_f64(const std::string &group, double *data, int64_t count, ReduceOp) {
  int g = 1;
  if (Status s = one_rank_group(*this, "all_reduce_f64", group, &g); !s) return s;
  if (count < 0 || (count > 0 && !data))
    return Status::error(rank_prefix(*this) + "all_reduce_f64 over group '" + group + "' of " +
                         std::to_string(count) + " doubles: " + (count < 0 ? "negative count" : "no data"));
  return Status::ok();
}

Status Communicator::gather_f64(const std::string &group, const double *mine, int64_t count, double *all) {
  int g = 1;
  if (Status s = one_rank_group(*this, "gather_f64", group, &g); !s) return s;
  if (count < 0 || (count > 0 && (!mine || !all)))
    return Status::error(rank_prefix(*this) + "gather_f64 over group '" + group + "' of " + std::to_string(count) +
                         " doubles: " + (count < 0 ? "negative count" : "no data"));
  if (count > 0 && all != mine) std::copy(mine, mine + count, all);
  return Status::ok();
}

Status Communicator::broadcast_bytes(const std::string &group, void *data, int64_t bytes, int root) {
  int g = 1;
  if (Status s = one_rank_group(*this, "broadcast_bytes", group, &g); !s) return s;
  if (root != 0 || bytes < 0 || (bytes > 0 && !data))
    return Status::error(rank_prefix(*this) + "broadcast_bytes over group '" + group + "' of " +
                         std::to_string(bytes) + " bytes from group rank " + std::to_string(root) + ": " +
                         (root != 0 ? "root is not in the group" : bytes < 0 ? "negative size" : "no data"));
  return Status::ok();
}

Status Communicator::send_control(int peer, int tag, const void *, int64_t bytes) {
  return no_peers(*this, "send_control", peer, tag, bytes);
}

Status Communicator::recv_control(int peer, int tag, void *, int64_t bytes) {
  return no_peers(*this, "recv_control", peer, tag, bytes);
}

Status Communicator::all_reduce_start(int handle, const std::string &group, void *data, int64_t count,
                                      plan::ElemType dtype, ReduceOp op) {
  if (started(handle))
    return Status::error("rank " + std::to_string(rank()) + ": all_reduce_start of bucket " + std::to_string(handle) +
                         " over group '" + group + "': the previous start of this bucket was never waited for");
  if (Status s = all_reduce(group, data, count, dtype, op); !s) return s;
  started_[handle] = group;
  return Status::ok();
}

Status Communicator::all_reduce_wait(int handle) {
  if (started_.erase(handle) == 0)
    return Status::error("rank " + std::to_string(rank()) + ": all_reduce_wait of bucket " + std::to_string(handle) +
                         ", which was not started");
  return Status::ok();
}

void Communicator::count_all_reduce(int64_t bytes, int group_ranks) {
  const int64_t b = all_reduce_bytes_sent(bytes, group_ranks);
  if (b > 0) bytes_sent_["all_reduce"] += b;
}

StatusOr<GroupInfo> resolve_group(const Communicator *comm, const std::string &group) {
  StatusOr<unsigned> axes = parse_group(group);
  if (!axes) return axes.status();
  GroupInfo gi;
  if (*axes == 0) return gi;
  if (!comm)
    return Status::error("group '" + group +
                         "' needs a communicator (KernelCall::comm is null)");
  StatusOr<int> size = comm->group_size(group);
  if (!size) return size.status();
  StatusOr<int> index = comm->group_rank(group);
  if (!index) return index.status();
  gi.size = *size;
  gi.index = *index;
  return gi;
}

namespace {

/// World of one rank: every group has one rank, so every all-reduce is the identity.
class LocalCommunicator final : public Communicator {
public:
  LocalCommunicator() : Communicator(plan::Mesh{}) {}
  int rank() const override { return 0; }
  int world_size() const override { return 1; }

  using Communicator::all_reduce;
  Status all_reduce(const std::string &group, void *, int64_t count, plan::ElemType dtype, ReduceOp) override {
    StatusOr<int> g = group_size(group);
    if (!g) return Status::error("rank 0: all_reduce: " + g.message());
    if (count < 0)
      return Status::error("rank 0: all_reduce over group '" + group + "': negative count " +
                           std::to_string(count));
    if (dtype == plan::ElemType::I32)
      return Status::error("rank 0: all_reduce over group '" + group + "': i32 data (f32 or bf16 only)");
    count_all_reduce(count * plan::elem_size(dtype), *g);
    return Status::ok();
  }
  Status send(int peer, int tag, const void *, int64_t bytes) override {
    return Status::error("rank 0: send to rank " + std::to_string(peer) + " (tag " +
                         std::to_string(tag) + ") of " + std::to_string(bytes) +
                         " bytes: this is a single-rank run (no MPI world), there are no peers");
  }
  Status recv(int peer, int tag, void *, int64_t bytes) override {
    return Status::error("rank 0: recv from rank " + std::to_string(peer) + " (tag " +
                         std::to_string(tag) + ") of " + std::to_string(bytes) +
                         " bytes: this is a single-rank run (no MPI world), there are no peers");
  }
  Status flush() override { return Status::ok(); }
};

} // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

} // namespace parallora::rt
