//===- device_profile.cpp - reading and writing device profiles ------------===//
#include "passes/planner/device_profile.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace parallora::planner {

using json = nlohmann::json;

double DeviceProfile::gemm_seconds(double m, double n, double k, const std::string &precision) const {
  auto it = gemm.find(precision);
  if (it == gemm.end()) it = gemm.find("fp32");
  if (it == gemm.end() || it->second.empty()) return 0;
  const double small = std::min({m, n, k});
  double tflops = it->second.front().tflops;
  for (const GemmRate &r : it->second)
    if (small >= static_cast<double>(r.min_dim)) tflops = r.tflops;
  return gemm_call_s + factor("gemm") * 2.0 * m * n * k / (tflops * 1e12);
}

double DeviceProfile::attention_seconds(double flops, const std::string &precision, const std::string &kernel) const {
  if (auto k = kernel_tflops.find(kernel); k != kernel_tflops.end()) return factor("attention") * flops / (k->second * 1e12);
  if (size_t dot = kernel.find('.'); dot != std::string::npos) return attention_seconds(flops, precision, kernel.substr(0, dot));
  auto it = attention_tflops.find(precision);
  if (it == attention_tflops.end()) it = attention_tflops.find("fp32");
  return it == attention_tflops.end() || it->second <= 0 ? 0 : factor("attention") * flops / (it->second * 1e12);
}

double DeviceProfile::memory_seconds(double bytes, const std::string &kernel) const {
  if (auto k = kernel_gbps.find(kernel); k != kernel_gbps.end()) return factor("memory") * bytes / (k->second * 1e9);
  if (size_t dot = kernel.find('.'); dot != std::string::npos)  // "swiglu_fwd.bf16" -> "swiglu_fwd"
    return memory_seconds(bytes, kernel.substr(0, dot));
  return memory_bandwidth_gbps > 0 ? factor("memory") * bytes / (memory_bandwidth_gbps * 1e9) : 0;
}

namespace {

/// Reads fields with errors that name the file and the dotted path of the field.
struct Reader {
  std::string file;
  std::string error;

  const json *at(const json &obj, const std::string &path, const std::string &key) {
    if (!error.empty()) return nullptr;
    if (!obj.is_object() || !obj.contains(key)) {
      error = file + ": " + path + key + ": missing";
      return nullptr;
    }
    return &obj[key];
  }
  /// A positive (or, with allow_zero, non-negative) number, given bare or as {"value": x, "source": ...}.
  double number(const json &obj, const std::string &path, const std::string &key, bool allow_zero = false) {
    const json *v = at(obj, path, key);
    if (!v) return 0;
    if (v->is_object()) {
      if (!v->contains("value")) {
        error = file + ": " + path + key + ": an object must hold \"value\" (and \"source\")";
        return 0;
      }
      v = &(*v)["value"];
    }
    if (!v->is_number()) {
      error = file + ": " + path + key + ": expected a number, got " + v->dump();
      return 0;
    }
    double x = v->get<double>();
    if (!(x > 0 || (allow_zero && x == 0))) {
      error = file + ": " + path + key + ": must be " + (allow_zero ? "at least 0" : "positive") + ", got " + v->dump();
      return 0;
    }
    return x;
  }
  LinkCost link(const json &obj, const std::string &path, const std::string &key) {
    LinkCost l;
    const json *v = at(obj, path, key);
    if (!v) return l;
    l.alpha_s = number(*v, path + key + ".", "alpha_s", true);
    l.bus_gbps = number(*v, path + key + ".", "bus_gbps");
    if (v->contains("wake_s")) l.wake_s = number(*v, path + key + ".", "wake_s", true);
    return l;
  }
  Links links(const json &obj, const std::string &key) {
    Links ls;
    const json *v = at(obj, "links.", key);
    if (!v) return ls;
    std::string p = "links." + key + ".";
    ls.all_reduce = link(*v, p, "all_reduce");
    ls.send = link(*v, p, "send");
    ls.broadcast = v->contains("broadcast") ? link(*v, p, "broadcast") : ls.all_reduce;
    return ls;
  }
};

} // namespace

namespace {
StatusOr<DeviceProfile> parse_checked(const std::string &text, const std::string &file);
} // namespace

StatusOr<DeviceProfile> parse_device_profile(const std::string &text, const std::string &file) {
  // A field of the wrong JSON type (a number where a name belongs) throws in nlohmann's accessors;
  // it becomes an error naming the file like every other.
  try {
    return parse_checked(text, file);
  } catch (const json::exception &e) {
    return Status::error(file + ": " + e.what());
  }
}

namespace {
StatusOr<DeviceProfile> parse_checked(const std::string &text, const std::string &file) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::error(file + ": not valid JSON");
  if (!j.is_object()) return Status::error(file + ": expected a JSON object");
  if (j.value("format", std::string()) != "parallora-device-profile")
    return Status::error(file + ": format: expected \"parallora-device-profile\"");
  const int version = j.contains("version") && j["version"].is_number_integer() ? j["version"].get<int>() : -1;
  if (version < 1 || version > kDeviceProfileVersion)
    return Status::error(file + ": version: expected 1 to " + std::to_string(kDeviceProfileVersion) +
                         (j.contains("version") ? ", got " + j["version"].dump() : ", missing"));
  Reader r{file, ""};
  DeviceProfile p;
  p.source_file = file;
  p.name = j.value("name", std::string());
  if (p.name.empty()) return Status::error(file + ": name: missing");
  p.description = j.value("description", std::string());
  p.backend = j.value("backend", std::string("cuda"));
  if (p.backend != "cpu" && p.backend != "cuda")
    return Status::error(file + ": backend: expected \"cpu\" or \"cuda\", got \"" + p.backend + "\"");
  p.devices_per_node = static_cast<int>(r.number(j, "", "devices_per_node"));
  p.memory_gib = r.number(j, "", "memory_gib");
  p.peak_tflops = r.number(j, "", "peak_tflops");
  p.instruction_overhead_s = r.number(j, "", "instruction_overhead_s", true);
  if (r.error.empty() && j.contains("gemm_call_s")) {
    if (version < 2) return Status::error(file + ": gemm_call_s: needs version 2 (got version " + std::to_string(version) + ")");
    p.gemm_call_s = r.number(j, "", "gemm_call_s", true);
  }
  p.memory_bandwidth_gbps = r.number(j, "", "memory_bandwidth_gbps");
  if (const json *g = r.at(j, "", "gemm")) {
    if (!g->is_object() || !g->contains("fp32")) return Status::error(file + ": gemm: needs a \"fp32\" table");
    for (auto it = g->begin(); it != g->end(); ++it) {
      std::string path = "gemm." + it.key();
      if (!it->is_array() || it->empty()) return Status::error(file + ": " + path + ": expected a non-empty array of rates");
      std::vector<GemmRate> &rates = p.gemm[it.key()];
      for (size_t i = 0; i < it->size(); ++i) {
        std::string ip = path + "[" + std::to_string(i) + "].";
        GemmRate gr;
        gr.min_dim = static_cast<int64_t>(r.number((*it)[i], ip, "min_dim", true));
        gr.tflops = r.number((*it)[i], ip, "tflops");
        if (!rates.empty() && gr.min_dim <= rates.back().min_dim && r.error.empty())
          r.error = file + ": " + ip + "min_dim: must increase along the table (" + std::to_string(gr.min_dim) +
                    " after " + std::to_string(rates.back().min_dim) + ")";
        rates.push_back(gr);
      }
      if (r.error.empty() && rates.front().min_dim != 0)
        r.error = file + ": " + path + "[0].min_dim: the first rate must start at 0";
    }
  }
  if (const json *a = r.at(j, "", "attention")) {
    for (auto it = a->begin(); it != a->end() && r.error.empty(); ++it)
      p.attention_tflops[it.key()] = r.number(*it, "attention." + it.key() + ".", "tflops");
    if (r.error.empty() && !p.attention_tflops.count("fp32")) r.error = file + ": attention.fp32: missing";
  }
  if (r.error.empty() && j.contains("kernels")) {
    const json &ks = j["kernels"];
    if (!ks.is_object()) return Status::error(file + ": kernels: expected an object of kernel names");
    for (auto it = ks.begin(); it != ks.end() && r.error.empty(); ++it) {
      std::string path = "kernels." + it.key() + ".";
      if (it->contains("gbps")) p.kernel_gbps[it.key()] = r.number(*it, path, "gbps");
      else if (it->contains("tflops")) p.kernel_tflops[it.key()] = r.number(*it, path, "tflops");
      else r.error = file + ": " + path + "gbps: missing (give \"gbps\" or \"tflops\")";
    }
  }
  if (r.error.empty() && j.contains("in_step")) {  // version 2
    const json &is = j["in_step"];
    if (version < 2) return Status::error(file + ": in_step: needs version 2 (got version " + std::to_string(version) + ")");
    if (!is.is_object()) return Status::error(file + ": in_step: expected an object");
    auto factors = [&](const json &o, const std::string &path, std::map<std::string, double> &f, double &dispatch,
                       bool allow_bf16) {
      for (auto it = o.begin(); it != o.end() && r.error.empty(); ++it) {
        if (it.key() == "dispatch_overhead_s") dispatch = r.number(o, path, it.key(), true);
        else if (it.key() == "gemm" || it.key() == "attention" || it.key() == "memory") f[it.key()] = r.number(o, path, it.key());
        else if (allow_bf16 && it.key() == "bf16") {
          if (!it->is_object()) r.error = file + ": " + path + "bf16: expected an object";
        } else if (it.key() != "source")
          r.error = file + ": " + path + it.key() + ": unknown (expected gemm, attention, memory, dispatch_overhead_s" +
                    (allow_bf16 ? ", bf16)" : ")");
      }
    };
    factors(is, "in_step.", p.in_step_factor, p.dispatch_overhead_s, true);
    if (r.error.empty() && is.contains("bf16") && is["bf16"].is_object()) {
      double d = -1;
      factors(is["bf16"], "in_step.bf16.", p.in_step_factor_bf16, d, false);
      p.dispatch_overhead_bf16_s = d;
    }
  }
  if (r.error.empty()) {
    const json *l = r.at(j, "", "links");
    if (l) {
      p.intra_node = r.links(*l, "intra_node");
      p.inter_node = l->contains("inter_node") ? r.links(*l, "inter_node") : p.intra_node;
    }
  }
  if (!r.error.empty()) return Status::error(r.error);
  return p;
}
} // namespace

StatusOr<DeviceProfile> load_device_profile(const std::string &name_or_path, const std::string &devices_dir) {
  std::string path = name_or_path;
  bool is_path = name_or_path.find('/') != std::string::npos || name_or_path.size() > 5 &&
                                                                     name_or_path.substr(name_or_path.size() - 5) == ".json";
  if (!is_path) path = devices_dir + "/" + name_or_path + ".json";
  std::ifstream is(path);
  if (!is) {
    std::string known;
    if (!is_path) known = " (no profile named '" + name_or_path + "' in " + devices_dir + ")";
    return Status::error("--device-profile: cannot read " + path + known);
  }
  std::stringstream ss;
  ss << is.rdbuf();
  return parse_device_profile(ss.str(), path);
}

std::string device_profile_json(const DeviceProfile &p, const std::map<std::string, std::string> &sources) {
  auto src = [&](const std::string &k) {
    auto it = sources.find(k);
    return it == sources.end() ? std::string("unspecified") : it->second;
  };
  auto valued = [&](double v, const std::string &k) { return json{{"value", v}, {"source", src(k)}}; };
  json j;
  j["format"] = "parallora-device-profile";
  j["version"] = kDeviceProfileVersion;
  j["name"] = p.name;
  j["description"] = p.description;
  j["backend"] = p.backend;
  j["devices_per_node"] = p.devices_per_node;
  j["memory_gib"] = p.memory_gib;
  j["peak_tflops"] = valued(p.peak_tflops, "peak_tflops");
  j["instruction_overhead_s"] = valued(p.instruction_overhead_s, "instruction_overhead_s");
  if (p.gemm_call_s > 0) j["gemm_call_s"] = valued(p.gemm_call_s, "gemm_call_s");
  j["memory_bandwidth_gbps"] = valued(p.memory_bandwidth_gbps, "memory_bandwidth_gbps");
  for (auto &[prec, rates] : p.gemm) {
    json arr = json::array();
    for (const GemmRate &r : rates)
      arr.push_back({{"min_dim", r.min_dim}, {"tflops", r.tflops}, {"source", src("gemm." + prec)}});
    j["gemm"][prec] = arr;
  }
  for (auto &[prec, t] : p.attention_tflops) j["attention"][prec] = {{"tflops", t}, {"source", src("attention." + prec)}};
  for (auto &[k, v] : p.kernel_gbps) j["kernels"][k] = {{"gbps", v}, {"source", src("kernels." + k)}};
  for (auto &[k, v] : p.kernel_tflops) j["kernels"][k] = {{"tflops", v}, {"source", src("kernels." + k)}};
  for (auto &[cls, f] : p.in_step_factor) j["in_step"][cls] = valued(f, "in_step." + cls);
  if (!p.in_step_factor.empty() || p.dispatch_overhead_s > 0)
    j["in_step"]["dispatch_overhead_s"] = valued(p.dispatch_overhead_s, "in_step.dispatch_overhead_s");
  for (auto &[cls, f] : p.in_step_factor_bf16) j["in_step"]["bf16"][cls] = valued(f, "in_step.bf16." + cls);
  if (p.dispatch_overhead_bf16_s >= 0)
    j["in_step"]["bf16"]["dispatch_overhead_s"] = valued(p.dispatch_overhead_bf16_s, "in_step.bf16.dispatch_overhead_s");
  auto link = [&](const LinkCost &l, const std::string &k) {
    json o{{"alpha_s", l.alpha_s}, {"bus_gbps", l.bus_gbps}, {"source", src(k)}};
    if (l.wake_s > 0) o["wake_s"] = l.wake_s;
    return o;
  };
  for (auto [key, ls] : {std::pair<const char *, const Links *>{"intra_node", &p.intra_node}, {"inter_node", &p.inter_node}}) {
    std::string k = std::string("links.") + key;
    j["links"][key] = {{"all_reduce", link(ls->all_reduce, k + ".all_reduce")},
                       {"send", link(ls->send, k + ".send")},
                       {"broadcast", link(ls->broadcast, k + ".broadcast")}};
  }
  return j.dump(2) + "\n";
}

} // namespace parallora::planner
