//===- auto_strategy.cpp - lora-compile --strategy auto --------------------===//
#include "tools/lora-compile/auto_strategy.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <tuple>
#include <unistd.h>

#include "frontend/hf_config.h"
#include "passes/planner/analytic.h"
#include "passes/planner/device_profile.h"
#include "runtime/plan/plan_io.h"
#include "tools/lora-compile/prediction.h"

namespace parallora {

using planner::Candidate;
using planner::Estimate;

namespace {

std::vector<int> divisors(int64_t n, int64_t cap) {
  std::vector<int> d;
  for (int64_t i = 1; i <= n && i <= cap; ++i)
    if (n % i == 0) d.push_back(static_cast<int>(i));
  return d;
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, bytes >= 1024.0 * 1024 * 1024 ? "%.2f GiB" : "%.1f MiB",
                bytes >= 1024.0 * 1024 * 1024 ? bytes / (1024.0 * 1024 * 1024) : bytes / (1024.0 * 1024));
  return b;
}

struct Scored {
  Candidate c;
  Estimate e;
  double plan_step_s = -1;   // from the compiled plan (verified candidates)
  int64_t plan_peak = -1;
  std::string verify_error;
};

/// Deterministic order: time, then memory, then the flags (a total order on candidates).
bool better(const Scored &a, const Scored &b) {
  return std::make_tuple(a.e.step_s, a.e.peak_bytes, a.c.flags()) < std::make_tuple(b.e.step_s, b.e.peak_bytes, b.c.flags());
}

std::vector<std::string> expand_targets(const std::string &t) {
  if (t == "all-linear") return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  std::vector<std::string> out;
  std::stringstream ss(t);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

/// Compiles `c` with this lora-compile (a child process, output discarded) and reads the plan's
/// predicted step and largest peak memory.
void verify(const AutoRequest &req, Scored &s, const std::string &dir, int index) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    s.verify_error = "cannot find the lora-compile executable";
    return;
  }
  exe[n] = 0;
  std::string plan_path = dir + "/candidate" + std::to_string(index) + ".lp";
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%g", req.lora_alpha);
  char bucket[32];
  std::snprintf(bucket, sizeof bucket, "%g", req.bucket_mb);
  std::string cmd = std::string("'") + exe + "' --hf-config '" + req.hf_config + "' --batch " + std::to_string(req.batch) +
                    " --seq-len " + std::to_string(req.seq_len) + " --lora-rank " + std::to_string(req.lora_rank) +
                    " --lora-alpha " + alpha + " --lora-targets '" + req.lora_targets + "' --bucket-mb " + bucket +
                    (req.no_overlap ? " --no-overlap-grad-sync" : "") + " --device-profile '" + req.device_profile + "' " +
                    s.c.flags() + " -o '" + plan_path + "' > '" + plan_path + ".log' 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    s.verify_error = "the compiler refused it (see " + plan_path + ".log)";
    return;
  }
  auto p = plan::read_plan(plan_path);
  if (!p) {
    s.verify_error = p.message();
    return;
  }
  s.plan_step_s = p->predicted_step_s;
  s.plan_peak = 0;
  for (const plan::RankPlan &r : p->ranks) s.plan_peak = std::max({s.plan_peak, r.peak_bytes, r.predicted_alloc_bytes});
  std::remove(plan_path.c_str());
  std::remove((plan_path + ".log").c_str());
}

} // namespace

int choose_strategy(const AutoRequest &req, AutoChoice &choice) {
  auto t0 = std::chrono::steady_clock::now();
  if (req.hf_config.empty()) {
    std::cerr << "error: --strategy auto needs the model's sizes: give --hf-config config.json or --model-size\n";
    return 2;
  }
  if (req.devices <= 0) {
    std::cerr << "error: --strategy auto needs --devices N (the number of ranks to plan for)\n";
    return 2;
  }
  if (req.batch <= 0 || req.seq_len <= 0) {
    std::cerr << "error: --strategy auto needs --batch and --seq-len\n";
    return 2;
  }
  auto cfg = load_llama_config(req.hf_config);
  if (!cfg) {
    std::cerr << "error: " << cfg.message() << "\n";
    return 1;
  }
  auto dev = planner::load_device_profile(req.device_profile, devices_dir());
  if (!dev) {
    std::cerr << "error: " << dev.message() << "\n";
    return 2;
  }
  planner::ModelDims m;
  m.vocab = cfg->vocab_size, m.hidden = cfg->hidden_size, m.intermediate = cfg->intermediate_size;
  m.layers = cfg->num_hidden_layers, m.heads = cfg->num_attention_heads, m.kv_heads = cfg->num_key_value_heads;
  m.head_dim = cfg->head_dim, m.tied = cfg->tie_word_embeddings;
  m.lora_rank = req.lora_rank, m.lora_targets = expand_targets(req.lora_targets);
  m.batch = req.batch, m.seq_len = req.seq_len;
  const double limit = (req.memory_limit_gib > 0 ? req.memory_limit_gib : dev->memory_gib) * 1024.0 * 1024 * 1024;

  // Enumerate. Mesh-level rejections are reported once per mesh; memory per candidate.
  std::vector<Scored> fit;
  std::vector<std::pair<std::string, std::string>> mesh_rejects;  // mesh, reason
  int64_t over_memory = 0, considered = 0;
  Scored smallest_over;
  smallest_over.e.peak_bytes = -1;
  const std::vector<std::string> precisions = req.precision ? std::vector<std::string>{*req.precision}
                                                            : std::vector<std::string>{"bf16", "fp32"};
  const std::vector<bool> recomputes = req.recompute ? std::vector<bool>{*req.recompute == "layers"} : std::vector<bool>{false, true};
  for (int tp : divisors(req.devices, req.devices))
    for (int pp : divisors(req.devices / tp, req.devices / tp)) {
      Candidate base;
      base.tp = tp, base.pp = pp, base.dp = req.devices / (tp * pp);
      std::string mesh = "dp " + std::to_string(base.dp) + " x tp " + std::to_string(tp) + " x pp " + std::to_string(pp);
      if (std::string why = planner::reject_reason(m, base, req.devices); !why.empty()) {
        mesh_rejects.push_back({mesh, why});
        continue;
      }
      std::vector<int> mbs = req.micro_batches ? std::vector<int>{static_cast<int>(*req.micro_batches)}
                                               : divisors(req.batch / base.dp, 64);
      for (int M : mbs) {
        Candidate c0 = base;
        c0.micro_batches = M;
        if (std::string why = planner::reject_reason(m, c0, req.devices); !why.empty()) {
          mesh_rejects.push_back({mesh + ", M " + std::to_string(M), why});
          continue;
        }
        std::vector<std::pair<std::string, int>> scheds;  // (schedule, virtual stages)
        if (pp <= 1) {
          scheds.push_back({"none", 1});
        } else {
          for (const std::string &sch : req.schedule ? std::vector<std::string>{*req.schedule}
                                                     : std::vector<std::string>{"1f1b", "gpipe", "interleaved", "zb-h1"}) {
            if (sch != "interleaved") {
              scheds.push_back({sch, 1});
              continue;
            }
            // Interleaved: V = 2 .. layers / pp chunks per rank (or the --virtual-stages given).
            const int vmax = std::max<int>(2, static_cast<int>(m.layers / pp));
            for (int v = req.virtual_stages ? int(*req.virtual_stages) : 2; v <= (req.virtual_stages ? int(*req.virtual_stages) : vmax); ++v) {
              Candidate ci = c0;
              ci.schedule = sch, ci.virtual_stages = v;
              if (std::string why = planner::reject_reason(m, ci, req.devices); !why.empty()) {
                mesh_rejects.push_back({mesh + ", M " + std::to_string(M), why});
                continue;
              }
              scheds.push_back({sch, v});
            }
          }
        }
        std::vector<bool> zeros = req.zero1 ? std::vector<bool>{*req.zero1} : std::vector<bool>{false, true};
        for (const auto &[sch, vs] : scheds)
          for (bool z : zeros) {
            if (z && base.dp < 2) continue;
            for (bool rc : recomputes)
              for (const std::string &prec : precisions) {
                Scored s;
                s.c = c0;
                s.c.schedule = sch, s.c.virtual_stages = vs, s.c.zero1 = z, s.c.recompute = rc, s.c.precision = prec;
                s.e = planner::estimate(m, s.c, *dev);
                ++considered;
                if (double(s.e.peak_bytes) > limit) {
                  ++over_memory;
                  if (smallest_over.e.peak_bytes < 0 || s.e.peak_bytes < smallest_over.e.peak_bytes) smallest_over = s;
                  continue;
                }
                fit.push_back(s);
              }
          }
      }
    }
  std::sort(fit.begin(), fit.end(), better);
  const double tokens = double(req.batch) * double(req.seq_len);
  std::printf("lora-compile: --strategy auto: %lld candidates for %d device(s) on %s (memory limit %s), %zu fit; "
              "estimated in %.2f s\n",
              static_cast<long long>(considered), req.devices, dev->name.c_str(), mib(limit).c_str(), fit.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (req.explain || fit.empty()) {
    std::printf("  rejected meshes:\n");
    for (auto &[mesh, why] : mesh_rejects) std::printf("    %-34s %s\n", mesh.c_str(), why.c_str());
    if (mesh_rejects.empty()) std::printf("    none\n");
    std::printf("  rejected for memory: %lld candidate(s) estimated above %s", static_cast<long long>(over_memory),
                mib(limit).c_str());
    if (smallest_over.e.peak_bytes >= 0)
      std::printf(" (the smallest of them: %s at %s)", smallest_over.c.describe().c_str(), mib(double(smallest_over.e.peak_bytes)).c_str());
    std::printf("\n");
  }
  if (fit.empty()) {
    std::cerr << "error: no strategy for " << req.devices << " device(s) fits the memory limit of " << mib(limit)
              << "; raise --memory-limit, add devices or shorten --seq-len / --batch\n";
    return 1;
  }

  // Compile the best few for real; the plan's prediction and memory decide.
  const int k = std::min<int>(std::max(1, req.top), static_cast<int>(fit.size()));
  char tmpl[] = "/tmp/lora-compile-auto-XXXXXX";
  const char *dir = mkdtemp(tmpl);
  if (!dir) {
    std::cerr << "error: --strategy auto: cannot make a temporary folder under /tmp\n";
    return 1;
  }
  for (int i = 0; i < k; ++i) verify(req, fit[static_cast<size_t>(i)], dir, i);
  rmdir(dir);
  std::printf("  top %d by estimate, then compiled and costed (plan = the compiled plan's prediction and peak memory):\n", k);
  std::printf("    %-3s %-58s %11s %11s %12s %7s %11s %11s %12s\n", "#", "strategy", "est. ms", "plan ms", "tokens/s", "MFU",
              "est. mem", "plan mem", "sent/step");
  int best = -1;
  for (int i = 0; i < k; ++i) {
    const Scored &s = fit[static_cast<size_t>(i)];
    double t = s.plan_step_s > 0 ? s.plan_step_s : s.e.step_s;
    char plan_ms[32] = "-", plan_mem[32] = "-";
    if (s.plan_step_s > 0) std::snprintf(plan_ms, sizeof plan_ms, "%.3f", 1e3 * s.plan_step_s);
    if (s.plan_peak >= 0) std::snprintf(plan_mem, sizeof plan_mem, "%s", mib(double(s.plan_peak)).c_str());
    double mfu = t > 0 ? 100.0 * s.e.flops_per_step / t / (dev->peak_tflops * 1e12 * req.devices) : 0;
    std::printf("    %-3d %-58s %11.3f %11s %12.0f %6.1f%% %11s %11s %12s\n", i + 1, s.c.describe().c_str(), 1e3 * s.e.step_s,
                plan_ms, t > 0 ? tokens / t : 0.0, mfu, mib(double(s.e.peak_bytes)).c_str(), plan_mem,
                mib(double(s.e.bytes_sent)).c_str());
    if (!s.verify_error.empty()) {
      std::printf("        not chosen: %s\n", s.verify_error.c_str());
      continue;
    }
    if (double(s.plan_peak) > limit) {
      std::printf("        not chosen: the compiled plan needs %s, above the limit %s\n", mib(double(s.plan_peak)).c_str(),
                  mib(limit).c_str());
      continue;
    }
    const Scored *b = best < 0 ? nullptr : &fit[static_cast<size_t>(best)];
    if (!b || std::make_tuple(s.plan_step_s, s.plan_peak, s.c.flags()) < std::make_tuple(b->plan_step_s, b->plan_peak, b->c.flags()))
      best = i;
  }
  if (best < 0) {
    std::cerr << "error: none of the " << k << " best candidates compiled within the memory limit; try --top " << 2 * k
              << " or a larger --memory-limit\n";
    return 1;
  }
  const Candidate &c = fit[static_cast<size_t>(best)].c;
  std::printf("  chosen: #%d %s  (lora-compile %s)\n", best + 1, c.describe().c_str(), c.flags().c_str());
  std::fflush(stdout);
  choice.dp = c.dp, choice.tp = c.tp, choice.pp = c.pp;
  choice.micro_batches = c.micro_batches;
  choice.schedule = c.pp > 1 ? c.schedule : "1f1b";
  choice.virtual_stages = c.pp > 1 && c.schedule == "interleaved" ? c.virtual_stages : 1;
  choice.precision = c.precision;
  choice.recompute = c.recompute ? "layers" : "none";
  choice.zero1 = c.zero1;
  return 0;
}

} // namespace parallora
