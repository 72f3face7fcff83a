//===- onnx_graph.cpp - load, map external data, infer shapes, fold -------===//
#include "frontend/onnx/onnx_graph.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <onnx/onnx_pb.h>

namespace parallora::onnx_import {

bool is_float_type(int32_t t) {
  return t == kFloat || t == kFloat16 || t == kDouble || t == kBFloat16;
}
bool is_int_type(int32_t t) {
  return t == kUint8 || t == kInt8 || t == kUint16 || t == kInt16 || t == kInt32 ||
         t == kInt64 || t == kBool || t == kUint32 || t == kUint64;
}
const char *onnx_type_name(int32_t t) {
  switch (t) {
  case kFloat: return "float32";
  case kFloat16: return "float16";
  case kBFloat16: return "bfloat16";
  case kDouble: return "float64";
  case kInt64: return "int64";
  case kInt32: return "int32";
  case kInt16: return "int16";
  case kInt8: return "int8";
  case kUint8: return "uint8";
  case kUint16: return "uint16";
  case kUint32: return "uint32";
  case kUint64: return "uint64";
  case kBool: return "bool";
  case kString: return "string";
  default: return "undefined";
  }
}
int64_t numel(const Shape &s) {
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d < 0 ? 0 : d, &n))
      return INT64_MAX; // saturate: callers compare against limits
  return n;
}
std::string shape_str(const Shape &s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i)
    r += (i ? "," : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return r + "]";
}
HostTensor HostTensor::make(int32_t type, Shape shape) {
  HostTensor t;
  t.type = type;
  t.shape = std::move(shape);
  if (is_float_type(type))
    t.f.assign(numel(t.shape), 0.0);
  else
    t.i.assign(numel(t.shape), 0);
  return t;
}
void HostTensor::set(int64_t k, double v) {
  if (is_float())
    f[k] = v;
  else if (type == kBool)
    i[k] = v != 0.0;
  else
    i[k] = int64_t(v);
}

std::string Node::describe() const {
  return "node '" + name + "' (" + op_type + ")";
}

static size_t type_size(int32_t t) {
  switch (t) {
  case kFloat: case kInt32: case kUint32: return 4;
  case kDouble: case kInt64: case kUint64: return 8;
  case kFloat16: case kBFloat16: case kInt16: case kUint16: return 2;
  case kInt8: case kUint8: case kBool: return 1;
  default: return 0;
  }
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; --exp; }
      bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static double read_element(const uint8_t *p, int32_t type) {
  switch (type) {
  case kFloat: { float v; std::memcpy(&v, p, 4); return v; }
  case kDouble: { double v; std::memcpy(&v, p, 8); return v; }
  case kFloat16: { uint16_t v; std::memcpy(&v, p, 2); return half_to_float(v); }
  case kBFloat16: { uint16_t v; std::memcpy(&v, p, 2); uint32_t b = uint32_t(v) << 16; float f; std::memcpy(&f, &b, 4); return f; }
  case kInt64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
  default: return 0;
  }
}

static int64_t read_int(const uint8_t *p, int32_t type) {
  switch (type) {
  case kInt64: { int64_t v; std::memcpy(&v, p, 8); return v; }
  case kUint64: { uint64_t v; std::memcpy(&v, p, 8); return int64_t(v); }
  case kInt32: { int32_t v; std::memcpy(&v, p, 4); return v; }
  case kUint32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
  case kInt16: { int16_t v; std::memcpy(&v, p, 2); return v; }
  case kUint16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
  case kInt8: return int8_t(*p);
  case kUint8: case kBool: return *p;
  default: return 0;
  }
}

OnnxGraph::OnnxGraph() : model_(std::make_unique<onnx::ModelProto>()) {}
OnnxGraph::~OnnxGraph() {
  for (auto &[ptr, len] : mappings_)
    munmap(ptr, len);
}

StatusOr<std::unique_ptr<OnnxGraph>> OnnxGraph::load(const std::string &path,
                                                     const LoadOptions &options) {
  std::unique_ptr<OnnxGraph> g(new OnnxGraph());
  g->fold_limit_ = options.fold_limit;
  if (Status s = g->parse(path, options); !s)
    return s;
  if (Status s = g->infer_and_fold(options); !s)
    return s;
  return g;
}

// Reads the raw bytes of one TensorProto (inline fields or external data).
static Status tensor_bytes(const onnx::TensorProto &t, const std::string &file, const std::string &dir,
                           std::vector<std::pair<void *, size_t>> &mappings,
                           std::vector<std::unique_ptr<uint8_t[]>> &owned,
                           std::map<std::string, std::pair<const uint8_t *, size_t>> &mapped_files,
                           Initializer &out) {
  out.name = t.name();
  out.type = t.data_type();
  out.shape.assign(t.dims().begin(), t.dims().end());
  for (int64_t d : out.shape)
    if (d < 0)
      return Status::error(file + ": initializer '" + t.name() + "' has a negative dim");
  size_t esize = type_size(out.type);
  if (esize == 0)
    return Status::error(file + ": initializer '" + t.name() + "' has unsupported data type " +
                         onnx_type_name(out.type) + " (" + std::to_string(out.type) + ")");
  for (int64_t d : out.shape)
    if (d > (int64_t(1) << 40))
      return Status::error(file + ": initializer '" + t.name() + "' has an implausible dim " + std::to_string(d));
  if (numel(out.shape) > (int64_t(1) << 40))
    return Status::error(file + ": initializer '" + t.name() + "' has an implausible shape " + shape_str(out.shape));
  size_t want = size_t(numel(out.shape)) * esize;
  if (t.data_location() == onnx::TensorProto_DataLocation_EXTERNAL) {
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto &kv : t.external_data()) {
      char *end = nullptr;
      if (kv.key() == "location") {
        location = kv.value();
      } else if (kv.key() == "offset" || kv.key() == "length") {
        long long v = std::strtoll(kv.value().c_str(), &end, 10);
        if (kv.value().empty() || *end != '\0' || v < 0)
          return Status::error(file + ": initializer '" + t.name() + "' has a bad external data " + kv.key() + " '" +
                               kv.value() + "'");
        (kv.key() == "offset" ? offset : length) = v;
      }
    }
    if (location.empty() || location.find("..") != std::string::npos || location[0] == '/')
      return Status::error(file + ": initializer '" + t.name() + "' has a bad external data location '" +
                           location + "'");
    std::string full = dir + location;
    auto it = mapped_files.find(full);
    if (it == mapped_files.end()) {
      int fd = ::open(full.c_str(), O_RDONLY);
      if (fd < 0)
        return Status::error(file + ": external data file '" + full + "' of initializer '" + t.name() +
                             "' cannot be opened: " + std::strerror(errno));
      struct stat st;
      fstat(fd, &st);
      void *p = nullptr;
      if (st.st_size > 0) {
        p = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
          ::close(fd);
          return Status::error("cannot mmap '" + full + "': " + std::strerror(errno));
        }
        mappings.push_back({p, size_t(st.st_size)});
      }
      ::close(fd);
      it = mapped_files.emplace(full, std::make_pair((const uint8_t *)p, size_t(st.st_size))).first;
    }
    if (length < 0)
      length = int64_t(want);
    if (offset < 0 || size_t(offset) + size_t(length) > it->second.second)
      return Status::error(file + ": initializer '" + t.name() + "' reads bytes [" + std::to_string(offset) +
                           ", " + std::to_string(offset + length) + ") past the end of '" + full + "' (" +
                           std::to_string(it->second.second) + " bytes)");
    if (size_t(length) != want)
      return Status::error(file + ": initializer '" + t.name() + "' has " + std::to_string(length) +
                           " bytes of external data but shape " + shape_str(out.shape) + " of " +
                           onnx_type_name(out.type) + " needs " + std::to_string(want));
    out.data = it->second.first + offset;
    out.nbytes = want;
    return Status::ok();
  }
  if (t.has_raw_data()) {
    if (t.raw_data().size() != want)
      return Status::error(file + ": initializer '" + t.name() + "' has " + std::to_string(t.raw_data().size()) +
                           " bytes but shape " + shape_str(out.shape) + " needs " + std::to_string(want));
    out.data = reinterpret_cast<const uint8_t *>(t.raw_data().data());
    out.nbytes = want;
    return Status::ok();
  }
  // Typed fields: copy into an owned little buffer kept alive by a mapping entry.
  size_t n = size_t(numel(out.shape));
  owned.push_back(std::make_unique<uint8_t[]>(std::max<size_t>(want, 1)));
  uint8_t *buf = owned.back().get();
  bool ok = true;
  if (n == 0)
    ; // empty tensor: nothing to copy (the typed field may be a null array)
  else if (out.type == kFloat && size_t(t.float_data_size()) == n)
    std::memcpy(buf, t.float_data().data(), want);
  else if (out.type == kInt64 && size_t(t.int64_data_size()) == n)
    std::memcpy(buf, t.int64_data().data(), want);
  else if (out.type == kDouble && size_t(t.double_data_size()) == n)
    std::memcpy(buf, t.double_data().data(), want);
  else if ((out.type == kInt32 || out.type == kBool || out.type == kInt8 || out.type == kUint8 ||
            out.type == kInt16 || out.type == kUint16 || out.type == kFloat16 || out.type == kBFloat16) &&
           size_t(t.int32_data_size()) == n) {
    for (size_t k = 0; k < n; ++k) {
      int32_t v = t.int32_data(k);
      std::memcpy(buf + k * esize, &v, esize);
    }
  } else {
    ok = n == 0;
  }
  if (!ok) {
    return Status::error(file + ": initializer '" + t.name() + "' holds no data for shape " + shape_str(out.shape));
  }
  out.data = buf;
  out.nbytes = want;
  return Status::ok();
}

Status OnnxGraph::parse(const std::string &path, const LoadOptions &options) {
  path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    return Status::error(path + ": cannot open: " + std::strerror(errno));
  {
    google::protobuf::io::FileInputStream raw(fd);
    google::protobuf::io::CodedInputStream coded(&raw);
    coded.SetTotalBytesLimit(INT32_MAX);
    bool ok = model_->ParseFromCodedStream(&coded) && coded.ConsumedEntireMessage();
    ::close(fd);
    if (!ok)
      return Status::error(path + ": not a valid ONNX model (protobuf parse failed: truncated or corrupt file)");
  }
  if (!model_->has_graph() || model_->graph().node_size() == 0)
    return Status::error(path + ": the ONNX model has no graph nodes");
  for (const auto &op : model_->opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx")
      opset_ = op.version();
  if (opset_ < 14)
    return Status::error(path + ": opset " + std::to_string(opset_) +
                         " is too old; export with opset_version >= 14 (torch.onnx.export(..., opset_version=18))");
  std::string dir;
  if (auto slash = path.rfind('/'); slash != std::string::npos)
    dir = path.substr(0, slash + 1);

  const onnx::GraphProto &graph = model_->graph();
  std::map<std::string, std::pair<const uint8_t *, size_t>> mapped;
  auto add_const = [&](const onnx::TensorProto &t, const std::string &name) -> Status {
    auto init = std::make_unique<Initializer>();
    if (Status s = tensor_bytes(t, path, dir, mappings_, owned_, mapped, *init); !s)
      return s;
    init->name = name;
    ValueInfo &v = values_[name];
    v.type = init->type;
    v.shape = init->shape;
    v.shape_known = true;
    ConstValue c;
    c.source = init.get();
    v.constant = c;
    initializers_.push_back(std::move(init));
    return Status::ok();
  };
  for (const auto &t : graph.initializer())
    if (Status s = add_const(t, t.name()); !s)
      return s;

  std::set<std::string> initializer_names;
  for (const auto &t : graph.initializer())
    initializer_names.insert(t.name());
  for (const auto &in : graph.input()) {
    if (initializer_names.count(in.name()))
      continue;
    ValueInfo &v = values_[in.name()];
    const auto &tt = in.type().tensor_type();
    v.type = tt.elem_type();
    v.shape_known = tt.has_shape();
    for (int d = 0; d < tt.shape().dim_size(); ++d) {
      const auto &dim = tt.shape().dim(d);
      int64_t size = dim.has_dim_value() ? dim.dim_value() : -1;
      if (size < 0 && d == 0 && options.batch > 0) size = options.batch;
      if (size < 0 && d == 1 && options.seq_len > 0) size = options.seq_len;
      if (size > (int64_t(1) << 32))
        return Status::error(path + ": graph input '" + in.name() + "' has an implausible dim " + std::to_string(size));
      if (size < 0)
        return Status::error(path + ": graph input '" + in.name() + "' has symbolic dim " + std::to_string(d) +
                             " ('" + dim.dim_param() + "'); pass " + (d == 0 ? "--batch" : "--seq-len") +
                             " to fix it");
      v.shape.push_back(size);
    }
    if (options.batch > 0 && !v.shape.empty() && tt.shape().dim(0).has_dim_value() && v.shape[0] != options.batch)
    {
      // `options.batch` is --batch / --micro-batches: name what the user typed and the fix.
      const int64_t m = std::max<int64_t>(options.micro_batches, 1), fixed = v.shape[0];
      std::string asked = "--batch " + std::to_string(options.batch * m) +
                          (m > 1 ? " with --micro-batches " + std::to_string(m) : std::string()) +
                          " asks for micro-batches of " + std::to_string(options.batch) + " sequences";
      return Status::error(path + ": this is a static-shape export: input '" + in.name() + "' has a fixed batch of " +
                           std::to_string(fixed) + ", but " + asked + "; use --batch " + std::to_string(fixed * m) +
                           " (the export's batch x --micro-batches) or leave --batch out, or re-export with a "
                           "dynamic batch dim");
    }
    if (options.seq_len > 0 && v.shape.size() > 1 && tt.shape().dim(1).has_dim_value() &&
        v.shape[1] != options.seq_len)
      return Status::error(path + ": --seq-len " + std::to_string(options.seq_len) + " conflicts with input '" +
                           in.name() + "' of fixed sequence length " + std::to_string(v.shape[1]));
    inputs_.push_back(in.name());
  }
  for (const auto &out : graph.output())
    outputs_.push_back(out.name());

  nodes_.reserve(graph.node_size());
  for (int k = 0; k < graph.node_size(); ++k) {
    const onnx::NodeProto &np = graph.node(k);
    Node n;
    n.proto = &np;
    n.name = np.name().empty() ? "#" + std::to_string(k) : np.name();
    n.op_type = np.op_type();
    n.domain = np.domain();
    n.inputs.assign(np.input().begin(), np.input().end());
    n.outputs.assign(np.output().begin(), np.output().end());
    n.index = k;
    nodes_.push_back(std::move(n));
  }
  // Constant nodes become constants right away (their value attribute is a TensorProto).
  for (const Node &n : nodes_) {
    if (n.op_type != "Constant")
      continue;
    for (const auto &a : n.proto->attribute()) {
      if (a.name() == "value" && a.has_t()) {
        if (Status s = add_const(a.t(), n.outputs[0]); !s)
          return Status::error(n.describe() + ": " + s.message());
      } else if (a.name() == "value_ints" || a.name() == "value_int" || a.name() == "value_float" ||
                 a.name() == "value_floats") {
        bool ints = a.name() == "value_ints" || a.name() == "value_int";
        HostTensor t;
        t.type = ints ? kInt64 : kFloat;
        if (a.name() == "value_ints") { t.shape = {a.ints_size()}; t.i.assign(a.ints().begin(), a.ints().end()); }
        else if (a.name() == "value_int") { t.shape = {}; t.i = {a.i()}; }
        else if (a.name() == "value_floats") { t.shape = {a.floats_size()}; t.f.assign(a.floats().begin(), a.floats().end()); }
        else { t.shape = {}; t.f = {a.f()}; }
        ValueInfo &v = values_[n.outputs[0]];
        v.type = t.type;
        v.shape = t.shape;
        v.shape_known = true;
        ConstValue c;
        c.host = std::make_shared<HostTensor>(std::move(t));
        v.constant = c;
      } else {
        return Status::error(n.describe() + ": unsupported Constant attribute '" + a.name() + "'");
      }
    }
  }
  return Status::ok();
}

const ValueInfo *OnnxGraph::value(const std::string &name) const {
  auto it = values_.find(name);
  return it == values_.end() ? nullptr : &it->second;
}
const Node *OnnxGraph::producer(const std::string &name) const {
  const ValueInfo *v = value(name);
  return v ? v->producer : nullptr;
}
bool OnnxGraph::is_const(const std::string &name) const {
  const ValueInfo *v = value(name);
  return v && v->constant.has_value();
}

StatusOr<HostTensor> OnnxGraph::materialize(const ConstValue &c, int32_t type, const Shape &shape) const {
  if (c.host)
    return *c.host;
  const Initializer &src = *c.source;
  HostTensor t = HostTensor::make(src.type, shape);
  size_t esize = type_size(src.type);
  int64_t n = numel(shape);
  size_t rank = src.shape.size();
  std::vector<int64_t> sstride(rank, 1);
  for (int d = int(rank) - 2; d >= 0; --d)
    sstride[d] = sstride[d + 1] * src.shape[d + 1];
  std::vector<int64_t> idx(rank, 0);
  for (int64_t k = 0; k < n; ++k) {
    // k indexes the result (permuted) tensor; find the source offset.
    int64_t rem = k, off = 0;
    for (int d = int(rank) - 1; d >= 0; --d) {
      int64_t coord = rem % shape[d];
      rem /= shape[d];
      int sd = c.perm.empty() ? d : int(c.perm[d]);
      off += coord * sstride[sd];
    }
    const uint8_t *p = src.data + off * esize;
    if (t.is_float())
      t.f[k] = read_element(p, src.type);
    else
      t.i[k] = read_int(p, src.type);
  }
  (void)type;
  return t;
}

StatusOr<HostTensor> OnnxGraph::materialize(const std::string &name) const {
  const ValueInfo *v = value(name);
  if (!v || !v->constant)
    return Status::error("value '" + name + "' is not a constant");
  return materialize(*v->constant, v->type, v->shape);
}

std::optional<double> OnnxGraph::scalar(const std::string &name) const {
  const ValueInfo *v = value(name);
  if (!v || !v->constant || numel(v->shape) != 1)
    return std::nullopt;
  auto t = materialize(name);
  if (!t)
    return std::nullopt;
  return t->at_f(0);
}

const onnx::AttributeProto *OnnxGraph::attr(const Node &n, const std::string &name) const {
  for (const auto &a : n.proto->attribute())
    if (a.name() == name)
      return &a;
  return nullptr;
}
int64_t OnnxGraph::attr_int(const Node &n, const std::string &name, int64_t dflt) const {
  const auto *a = attr(n, name);
  return a ? a->i() : dflt;
}
std::vector<int64_t> OnnxGraph::attr_ints(const Node &n, const std::string &name) const {
  const auto *a = attr(n, name);
  if (!a)
    return {};
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

Status OnnxGraph::infer_and_fold(const LoadOptions &options) {
  for (const Node &n : nodes_) {
    for (const std::string &in : n.inputs) {
      if (in.empty())
        continue;
      auto it = values_.find(in);
      if (it == values_.end())
        return Status::error(path_ + ": " + n.describe() + " reads '" + in +
                             "', which no node, input or initializer defines (graph not topologically sorted?)");
      it->second.users.push_back(&n);
    }
    if (n.op_type == "Constant")
      continue;
    for (const std::string &out : n.outputs)
      values_[out].producer = &n;

    std::vector<const ValueInfo *> ins;
    std::vector<const HostTensor *> data;
    std::vector<HostTensor> owned;
    owned.reserve(n.inputs.size());
    bool all_const = true;
    for (const std::string &in : n.inputs) {
      const ValueInfo *v = in.empty() ? nullptr : value(in);
      ins.push_back(v);
      if (!v) { data.push_back(nullptr); continue; }
      if (!v->constant) { all_const = false; data.push_back(nullptr); continue; }
      data.push_back(nullptr); // filled below when folding
    }
    // Layout-only ops on a lazy weight view stay lazy: no copy of large weights.
    if (all_const && (n.op_type == "Transpose" || n.op_type == "Identity") && !ins.empty() && ins[0] &&
        !n.outputs.empty() &&
        ins[0]->constant->is_lazy()) {
      const ValueInfo &src = *ins[0];
      ValueInfo &out = values_[n.outputs[0]];
      ConstValue c = *src.constant;
      out.type = src.type;
      if (n.op_type == "Transpose") {
        std::vector<int64_t> perm = attr_ints(n, "perm");
        if (perm.empty())
          for (int64_t d = int64_t(src.shape.size()) - 1; d >= 0; --d)
            perm.push_back(d);
        std::vector<bool> seen(src.shape.size(), false);
        bool valid = perm.size() == src.shape.size();
        for (int64_t p : perm) {
          valid = valid && p >= 0 && p < int64_t(seen.size()) && !seen[p];
          if (valid) seen[p] = true;
        }
        if (!valid)
          return Status::error(path_ + ": " + n.describe() + ": perm is not a permutation of the input's " +
                               std::to_string(src.shape.size()) + " dims");
        std::vector<int64_t> composed(perm.size());
        out.shape.clear();
        for (size_t d = 0; d < perm.size(); ++d) {
          composed[d] = c.perm.empty() ? perm[d] : c.perm[perm[d]];
          out.shape.push_back(src.shape[perm[d]]);
        }
        c.perm = composed;
      } else {
        out.shape = src.shape;
      }
      out.shape_known = true;
      out.constant = c;
      continue;
    }
    int64_t in_elems = 0;
    for (const ValueInfo *v : ins)
      if (v) in_elems += numel(v->shape);
    bool fold = all_const && in_elems <= options.fold_limit;
    // Small constant operands (axes, shapes, scalars) are always visible to the kernels, so
    // shapes can be computed even when the node itself cannot be folded.
    {
      for (size_t k = 0; k < ins.size(); ++k) {
        if (!ins[k] || !ins[k]->constant || (!fold && numel(ins[k]->shape) > 65536)) continue;
        auto t = materialize(*ins[k]->constant, ins[k]->type, ins[k]->shape);
        if (!t)
          return t.status();
        owned.push_back(std::move(*t));
        data[k] = &owned.back();
      }
    }
    std::vector<EvalResult> results(n.outputs.size());
    if (Status s = eval_onnx_node(*this, n, ins, data, results); !s)
      return Status::error(path_ + ": " + n.describe() + ": " + s.message());
    static const bool debug = std::getenv("PARALLORA_ONNX_DEBUG") != nullptr;
    for (size_t k = 0; k < n.outputs.size(); ++k) {
      if (n.outputs[k].empty())
        continue;
      if (debug)
        fprintf(stderr, "[onnx] %s -> %s %s%s\n", n.describe().c_str(), n.outputs[k].c_str(),
                results[k].shape_known ? shape_str(results[k].shape).c_str() : "unknown",
                results[k].data ? " (folded)" : "");
      // Crafted graphs can describe absurd shapes; stop before any kernel multiplies them.
      for (int64_t d : results[k].shape)
        if (d < -1 || d > (int64_t(1) << 40) || numel(results[k].shape) > (int64_t(1) << 48))
          return Status::error(path_ + ": " + n.describe() + ": output '" + n.outputs[k] + "' would have shape " +
                               shape_str(results[k].shape));
      ValueInfo &out = values_[n.outputs[k]];
      out.type = results[k].type;
      out.shape = results[k].shape;
      out.shape_known = results[k].shape_known;
      if (results[k].data && numel(results[k].shape) <= options.fold_limit) {
        ConstValue c;
        c.host = std::make_shared<HostTensor>(std::move(*results[k].data));
        out.constant = c;
      }
    }
  }
  for (const std::string &out : outputs_)
    if (!value(out))
      return Status::error(path_ + ": graph output '" + out + "' is not produced by any node");
  return Status::ok();
}

StatusOr<HostTensor> OnnxGraph::evaluate(const std::vector<const Node *> &nodes,
                                         std::map<std::string, HostTensor> env,
                                         const std::string &output) const {
  for (const Node *n : nodes) {
    std::vector<const ValueInfo *> ins;
    std::vector<const HostTensor *> data;
    std::vector<ValueInfo> tmp(n->inputs.size());
    std::vector<HostTensor> consts;
    consts.reserve(n->inputs.size());
    for (size_t k = 0; k < n->inputs.size(); ++k) {
      const std::string &in = n->inputs[k];
      if (in.empty()) { ins.push_back(nullptr); data.push_back(nullptr); continue; }
      auto it = env.find(in);
      if (it != env.end()) {
        tmp[k].type = it->second.type;
        tmp[k].shape = it->second.shape;
        tmp[k].shape_known = true;
        ins.push_back(&tmp[k]);
        data.push_back(&it->second);
        continue;
      }
      const ValueInfo *v = value(in);
      if (!v || !v->constant)
        return Status::error("probe evaluation: input '" + in + "' of " + n->describe() + " is unbound");
      auto t = materialize(in);
      if (!t) return t.status();
      consts.push_back(std::move(*t));
      ins.push_back(v);
      data.push_back(&consts.back());
    }
    std::vector<EvalResult> results(n->outputs.size());
    if (Status s = eval_onnx_node(*this, *n, ins, data, results); !s)
      return s;
    for (size_t k = 0; k < n->outputs.size(); ++k) {
      if (!results[k].data)
        return Status::error("probe evaluation: " + n->describe() + " cannot be evaluated");
      env[n->outputs[k]] = std::move(*results[k].data);
    }
  }
  auto it = env.find(output);
  if (it == env.end())
    return Status::error("probe evaluation: '" + output + "' was not computed");
  return it->second;
}

} // namespace parallora::onnx_import
