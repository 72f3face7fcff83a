//===- device_profile.h - what one device and its links cost ---------------===//
//
// A device profile (models/devices/*.json, format "parallora-device-profile" version 2; version
// 1 files are still read, with no in-step corrections; documented in docs/planner.md) gives the cost model its rates: GEMM throughput by shape
// class and precision, attention throughput, memory bandwidth for the memory-bound kernels,
// a fixed overhead per instruction, and alpha-beta costs (latency + bytes / bus bandwidth) of
// all-reduce, send/recv and broadcast inside a node and across nodes. Every number in the file
// carries its source. Plain C++ (no MLIR): lora-compile and lora-bench both use it.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/base/status.h"

namespace parallora::planner {

constexpr int kDeviceProfileVersion = 2;

/// A GEMM rate that applies when the smallest of M, N, K is at least `min_dim`.
struct GemmRate {
  int64_t min_dim = 0;
  double tflops = 0;
};

/// Latency and bus bandwidth of one collective kind on one kind of link. The time of a call that
/// sends `b` bytes per rank (runtime/plan/collective_bytes.h's convention) is alpha + b / bus.
struct LinkCost {
  double alpha_s = 0;
  double bus_gbps = 0;  // GB/s = 1e9 bytes per second
  // Optional ("wake_s"): the extra latency when the receiving side has been waiting a while (the
  // runtime's poll backs off into sleeps): the cost model adds it where a rank waits on another's
  // compute (a pipeline stage's input, the control all-reduce that ends a step). Not in seconds().
  double wake_s = 0;
  double seconds(double bytes_sent) const { return alpha_s + (bus_gbps > 0 ? bytes_sent / (bus_gbps * 1e9) : 0.0); }
};

struct Links {
  LinkCost all_reduce, send, broadcast;
};

struct DeviceProfile {
  std::string name, description, source_file;
  std::string backend = "cuda";       // "cpu" | "cuda": which runtime backend's memory rules apply
  int devices_per_node = 1;
  double memory_gib = 0;
  double peak_tflops = 0;             // the MFU denominator (dense bf16 of the data sheet)
  double instruction_overhead_s = 0;  // every instruction pays it once
  double memory_bandwidth_gbps = 0;   // memory-bound kernels: bytes read + written / this
  // Per storage precision ("fp32", "bf16"): rates ordered by min_dim ascending. A precision
  // missing from the file falls back to "fp32".
  std::map<std::string, std::vector<GemmRate>> gemm;
  std::map<std::string, double> attention_tflops;
  Links intra_node, inter_node;
  // Optional per-kernel rates that replace the class rate for one kernel name (a CPU's
  // swiglu or cross entropy is bound by exp, not by memory): "gbps" = bytes moved per second
  // for memory-class kernels, "tflops" = model FLOPs per second for attention.
  std::map<std::string, double> kernel_gbps, kernel_tflops;
  // Version 2, optional ("in_step"): what a real training step costs beyond the kernels timed hot
  // in a loop (lora-bench --calibrate --step-plan): per op class ("gemm", "attention", "memory")
  // the measured in-step kernel time over the hot-loop prediction (1 when absent), and the
  // executor's own time per instruction between kernels (dispatch, 0 when absent).
  std::map<std::string, double> in_step_factor;
  double dispatch_overhead_s = 0;
  // Version 2, optional ("gemm_call_s"): the fixed cost of one GEMM library call (oneDNN's or
  // OpenBLAS's dispatch, our tiling), charged per GEMM of a linear kernel on top of its work; the
  // GEMM rates are then measured net of it. Without it small GEMMs (small micro-batches, data
  // parallel shards) cost proportionally less than they do.
  double gemm_call_s = 0;
  // Version 2, optional ("in_step": {"bf16": {...}}): the same factors and dispatch measured on a
  // bf16 plan (lora-bench --step-plan-bf16), whose kernels also widen and round; for_precision()
  // puts them in place for a bf16 plan.
  std::map<std::string, double> in_step_factor_bf16;
  double dispatch_overhead_bf16_s = -1;  // < 0: none measured

  /// This profile as it applies to a plan of storage `precision`: for "bf16", the bf16 in-step
  /// factors and dispatch replace the fp32 ones when the profile has them; otherwise unchanged.
  DeviceProfile for_precision(const std::string &precision) const {
    DeviceProfile d = *this;
    if (precision == "bf16" && !in_step_factor_bf16.empty()) {
      d.in_step_factor = in_step_factor_bf16;
      if (dispatch_overhead_bf16_s >= 0) d.dispatch_overhead_s = dispatch_overhead_bf16_s;
    }
    return d;
  }

  /// The factor of op class `cls` (1 without one).
  double factor(const std::string &cls) const {
    auto it = in_step_factor.find(cls);
    return it == in_step_factor.end() ? 1.0 : it->second;
  }
  /// What every instruction costs besides its work: the kernel's fixed cost + the dispatch.
  double per_instruction_s() const { return instruction_overhead_s + dispatch_overhead_s; }

  // The three rates below include the in-step factor of their class.
  /// Seconds of a GEMM (M x K) * (K x N) in `precision`: one library call (gemm_call_s) + the work.
  double gemm_seconds(double m, double n, double k, const std::string &precision) const;
  /// Seconds of causal attention doing `flops` model FLOPs (`kernel`'s own rate when given).
  double attention_seconds(double flops, const std::string &precision, const std::string &kernel = "") const;
  /// Seconds of a memory-bound kernel moving `bytes` (`kernel`'s own rate when the profile has one).
  double memory_seconds(double bytes, const std::string &kernel = "") const;
};

/// Reads a profile: `name_or_path` is a file, or a name looked up as <devices_dir>/<name>.json.
/// Errors name the file and the field ("h100.json: links.intra_node.all_reduce.bus_gbps: ...").
StatusOr<DeviceProfile> load_device_profile(const std::string &name_or_path, const std::string &devices_dir);
/// Parses the JSON text of a profile; `file` is used in error messages only.
StatusOr<DeviceProfile> parse_device_profile(const std::string &json_text, const std::string &file);
/// The profile as JSON text (the format load_device_profile reads), with `sources` written next
/// to the numbers they explain: keys "peak_tflops", "gemm.fp32", "links.intra_node.all_reduce", ...
std::string device_profile_json(const DeviceProfile &p, const std::map<std::string, std::string> &sources);

} // namespace parallora::planner
