//===- lora-run.cpp - train LoRA adapters by executing a compiled plan ----===//
//
//   lora-run plan.lp --data tokens.bin --steps N --out dir/ [options]   train
//   lora-run --describe plan.lp [--verbose]                              inspect a plan
//
// Exit codes: 0 success, 1 a runtime error (missing or bad file, kernel error), 2 a command
// line error. Every error names the file or flag involved.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <cstring>
#include <sys/resource.h>
#include <sys/stat.h>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "frontend/safetensors.h"
#include "runtime/core/executor.h"
#include "runtime/cpu/kernels.h"
#include "runtime/io/checkpoint.h"
#include "runtime/io/metrics.h"
#include "runtime/io/peft_adapter.h"
#include "runtime/io/token_data.h"
#include "runtime/plan/plan_io.h"

using namespace parallora;
using namespace parallora::rt;
using json = nlohmann::json;

namespace {

struct Args {
  std::string plan;
  bool describe = false, verbose = false;
  std::string data, data_format = "auto", val_data;
  int64_t val_every = 0, val_batches = 0;
  int64_t steps = 0;
  uint64_t seed = 42;
  bool shuffle = true;
  std::string out, weights, init_adapter, resume;
  int64_t save_every = 0, keep_last = 0;
  int threads = -1;
  int64_t log_every = 10;
  bool profile = false;
  std::string dump_first_step;
};

/// An integer flag value >= lo, with a readable message ("--steps: must be >= 1 (got 0)").
CLI::Validator at_least(int64_t lo) {
  return CLI::Validator(
      [lo](std::string &text) -> std::string {
        try {
          size_t used = 0;
          long long v = std::stoll(text, &used);
          if (used != text.size()) return "not an integer: " + text;
          if (v < lo) return "must be >= " + std::to_string(lo) + " (got " + text + ")";
        } catch (const std::exception &) {
          return "not an integer: " + text;
        }
        return "";
      },
      ">=" + std::to_string(lo));
}

/// A runtime failure: printed as "error: <message>", exit code 1.
int fail(const std::string &message) {
  std::cerr << "error: " << message << "\n";
  return 1;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

bool is_dir(const std::string &p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string shape_str(const std::vector<int64_t> &shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s.empty() ? "scalar" : s;
}

std::string fmt(const char *f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

/// Trainables (or OptStates) as the io library's borrowed tensors.
std::vector<NamedTensor> named_tensors(const Executor &ex, plan::BufferKind kind) {
  std::vector<NamedTensor> out;
  for (const BufferTensor &t : ex.buffers(kind)) out.push_back({t.buffer->name, t.buffer->shape, t.tensor.f32()});
  return out;
}

/// Keeps the lines of an existing metrics file up to (and including) `step`, so a resumed run
/// appends without duplicating the steps the checkpoint rolled back.
void truncate_metrics(const std::string &path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

/// Feeds one [n, seq_len] block as both input_ids and labels (the loss shifts the labels).
Status feed_block(Executor &ex, const std::vector<int32_t> &block) {
  if (Status s = ex.feed("input_ids", block.data(), static_cast<int64_t>(block.size())); !s) return s;
  if (const BufferTensor *l = ex.find("labels"); l && l->buffer->kind == plan::BufferKind::Input)
    return ex.feed("labels", block.data(), static_cast<int64_t>(block.size()));
  return Status::ok();
}

/// Tokens per fed block of the plan's "input_ids".
StatusOr<int64_t> input_tokens(const Executor &ex) {
  const BufferTensor *ids = ex.find("input_ids");
  if (!ids || ids->buffer->kind != plan::BufferKind::Input) return Status::error("the plan has no input 'input_ids'");
  return ids->buffer->numel();
}

struct Validator {
  const TokenFile *file = nullptr;
  int64_t seq_len = 0, batch = 0, batches = 0;
};

/// Mean eval_step loss over the first `batches` batches of the validation file (unshuffled).
StatusOr<double> validate(Executor &ex, const Validator &v) {
  SequenceLoader loader(v.file, v.seq_len, 0, /*shuffle=*/false);
  std::vector<int32_t> block(static_cast<size_t>(v.batch * v.seq_len));
  double sum = 0;
  for (int64_t b = 0; b < v.batches; ++b) {
    if (Status s = loader.next(v.batch, block.data()); !s) return Status::error(v.file->path + ": " + s.message());
    if (Status s = feed_block(ex, block); !s) return s;
    if (Status s = ex.run("eval_step", nullptr); !s) return Status::error("eval_step: " + s.message());
    sum += ex.loss();
  }
  return sum / static_cast<double>(v.batches);
}

/// --dump-first-step: loss, the micro-batch logits and every gradient after the first
/// micro_step (before the optimizer).
Status dump_first_step(const std::string &path, const Executor &ex, double loss, const std::vector<float> &logits,
                       const std::vector<int64_t> &logits_shape) {
  std::vector<TensorToWrite> tensors;
  float loss_f = static_cast<float>(loss);
  tensors.push_back({"loss", DType::F32, {1}, &loss_f});
  if (!logits.empty()) tensors.push_back({"logits", DType::F32, logits_shape, logits.data()});
  std::vector<std::string> names;  // keep the strings alive
  auto grads = ex.buffers(plan::BufferKind::Grad);
  names.reserve(grads.size());
  for (const BufferTensor &g : grads) {
    names.push_back("grad." + (g.buffer->param.empty() ? g.buffer->name : g.buffer->param));
    tensors.push_back({names.back(), DType::F32, g.buffer->shape, g.tensor.data});
  }
  return write_safetensors(path, tensors, {{"format", "pt"}, {"producer", "lora-run --dump-first-step"}});
}

int describe(const Args &a) {
  auto plan = plan::read_plan(a.plan);
  if (!plan) return fail(plan.message());
  std::cout << plan::describe_plan(*plan, a.verbose);
  return 0;
}

int train(const Args &a) {
  auto t_start = std::chrono::steady_clock::now();
  auto plan_or = plan::read_plan(a.plan);
  if (!plan_or) return fail(plan_or.message());
  const plan::Plan &plan = *plan_or;
  if (plan.world_size != 1)
    return fail(a.plan + ": this plan has " + std::to_string(plan.world_size) + " ranks; launch with mpirun -np " +
                std::to_string(plan.world_size) + " (multi-rank runs are not supported by this lora-run yet)");
  const std::string fingerprint = plan::plan_fingerprint(plan);

  // Resume first: the checkpoint's seed fixes the data order.
  std::optional<LoadedCheckpoint> ckpt;
  uint64_t seed = a.seed;
  if (!a.resume.empty()) {
    auto c = load_checkpoint(a.resume);
    if (!c) return fail("--resume " + a.resume + ": " + c.message());
    ckpt = std::move(*c);
    if (ckpt->state.plan_fingerprint != fingerprint)
      return fail("--resume " + ckpt->path + ": the checkpoint was written for plan " + ckpt->state.plan_fingerprint +
                  ", but " + a.plan + " has fingerprint " + fingerprint +
                  " (resume with the plan that wrote the checkpoint, or start a new run with --init-adapter " + ckpt->path +
                  ")");
    if (seed != ckpt->state.seed)
      std::cerr << "lora-run: warning: using the checkpoint's seed " << ckpt->state.seed << " (not --seed " << seed
                << ") so the data order continues unchanged\n";
    seed = ckpt->state.seed;
  }

  // Data.
  auto train_file = TokenFile::open(a.data, a.data_format);
  if (!train_file) return fail("--data " + a.data + ": " + train_file.message());
  SequenceLoader loader(&*train_file, plan.seq_len, seed, a.shuffle);
  if (plan.vocab_size > 0)
    if (Status s = loader.check_vocab(plan.vocab_size); !s) return fail("--data: " + s.message());
  std::optional<TokenFile> val_file;
  if (!a.val_data.empty()) {
    auto v = TokenFile::open(a.val_data, a.data_format);
    if (!v) return fail("--val-data " + a.val_data + ": " + v.message());
    val_file = std::move(*v);
    SequenceLoader check(&*val_file, plan.seq_len, 0, false);
    if (plan.vocab_size > 0)
      if (Status s = check.check_vocab(plan.vocab_size); !s) return fail("--val-data: " + s.message());
  }

  // Threads, kernels, executor.
  int threads = a.threads;
  if (threads < 0) {
    const char *env = std::getenv("OMP_NUM_THREADS");
    threads = env ? std::max(0, std::atoi(env)) : 0;
  }
  cpu::set_num_threads(threads);
  KernelRegistry registry;
  cpu::register_kernels(registry);
  auto ex_or = Executor::create(plan, 0, registry, "cpu");
  if (!ex_or) return fail(a.plan + ": " + ex_or.message());
  Executor &ex = **ex_or;
  ex.enable_profile(a.profile);

  const int64_t micro_batch = plan.global_batch / (plan.micro_batches * plan.world_size);
  auto ids_numel = input_tokens(ex);
  if (!ids_numel) return fail(a.plan + ": " + ids_numel.message());
  if (micro_batch < 1 || micro_batch * plan.micro_batches != plan.global_batch ||
      *ids_numel != micro_batch * plan.seq_len)
    return fail(a.plan + ": input 'input_ids' holds " + std::to_string(*ids_numel) + " tokens but global batch " +
                std::to_string(plan.global_batch) + " / " + std::to_string(plan.micro_batches) +
                " micro-batches x seq_len " + std::to_string(plan.seq_len) + " needs " +
                std::to_string(micro_batch * plan.seq_len));
  if (loader.num_sequences() < micro_batch)
    return fail("--data " + a.data + ": " + std::to_string(train_file->num_tokens()) + " tokens make " +
                std::to_string(loader.num_sequences()) + " sequences of " + std::to_string(plan.seq_len) +
                ", fewer than one micro-batch of " + std::to_string(micro_batch));
  Validator val;
  if (val_file) {
    if (!ex.has_program("eval_step")) return fail(a.plan + ": --val-data given but the plan has no eval_step program");
    val.file = &*val_file;
    val.seq_len = plan.seq_len;
    val.batch = *ids_numel / plan.seq_len;
    int64_t available = (val_file->num_tokens() / plan.seq_len) / val.batch;
    if (available < 1)
      return fail("--val-data " + a.val_data + ": " + std::to_string(val_file->num_tokens()) +
                  " tokens, fewer than one evaluation batch of " + std::to_string(val.batch) + " x " +
                  std::to_string(plan.seq_len));
    val.batches = a.val_batches > 0 ? std::min(a.val_batches, available) : available;
    if (a.val_batches > available)
      std::cerr << "lora-run: warning: --val-batches " << a.val_batches << " but " << a.val_data << " holds only "
                << available << " batches; using " << available << "\n";
  }

  // Parameters: base weights, then the adapters (init spec, --init-adapter or the checkpoint).
  const std::string weights = a.weights.empty() ? plan.base_weights : a.weights;
  const bool adapters_given = !a.init_adapter.empty() || ckpt.has_value();
  if (Status s = ex.init_parameters(weights, seed, /*skip_trainables=*/adapters_given); !s) {
    std::string hint = (a.weights.empty() && !plan.base_weights.empty())
                           ? " (the plan records base weights " + plan.base_weights + "; pass --weights to use another copy)"
                           : "";
    return fail(s.message() + hint);
  }
  const std::string base_model = weights;
  if (!a.init_adapter.empty()) {
    plan::LoraInfo info;
    auto adapter = read_peft_adapter_with_shapes(a.init_adapter, &info);
    if (!adapter) return fail("--init-adapter " + a.init_adapter + ": " + adapter.message());
    std::map<std::string, std::vector<float>> values;
    std::map<std::string, std::vector<int64_t>> shapes;
    for (auto &[name, t] : *adapter) {
      shapes[name] = t.shape;
      values[name] = std::move(t.data);
    }
    if (Status s = ex.set_trainables(values, &shapes); !s) return fail("--init-adapter " + a.init_adapter + ": " + s.message());
    if (info.rank != plan.lora.rank || info.alpha != plan.lora.alpha)
      std::cerr << "lora-run: warning: --init-adapter " << a.init_adapter << " was saved with r=" << info.rank
                << ", lora_alpha=" << info.alpha << " but the plan uses r=" << plan.lora.rank
                << ", lora_alpha=" << plan.lora.alpha << " (the plan's scaling applies)\n";
  }
  int64_t start_step = 0;
  if (ckpt) {
    if (Status s = ex.set_trainables(ckpt->adapters); !s) return fail("--resume " + ckpt->path + ": " + s.message());
    if (Status s = ex.set_optimizer_state(ckpt->optimizer_state); !s)
      return fail("--resume " + ckpt->path + ": " + s.message());
    start_step = ckpt->state.step;
    loader.restore(ckpt->state.data);
  }

  // Output directory and metrics.
  if (mkdir(a.out.c_str(), 0755) != 0 && errno != EEXIST) return fail("--out " + a.out + ": " + std::strerror(errno));
  if (!is_dir(a.out)) return fail("--out " + a.out + " is not a directory");
  const std::string metrics_path = a.out + "/metrics.jsonl";
  if (ckpt) truncate_metrics(metrics_path, start_step);
  auto metrics_or = JsonlWriter::open(metrics_path, /*append=*/ckpt.has_value());
  if (!metrics_or) return fail(metrics_or.message());
  JsonlWriter &metrics = *metrics_or;

  const int64_t tokens_per_step = plan.global_batch * plan.seq_len;
  std::cout << "lora-run: " << a.plan << " (" << fingerprint << "), " << a.steps << " steps of " << plan.global_batch
            << " x " << plan.seq_len << " tokens (" << plan.micro_batches << " micro-batch"
            << (plan.micro_batches == 1 ? "" : "es") << "), data " << a.data << " (" << train_file->num_tokens()
            << " tokens, " << loader.num_sequences() << " sequences" << (a.shuffle ? ", shuffled" : "") << ")\n"
            << "  memory: arena " << fmt("%.1f", ex.arena_bytes() / 1048576.0) << " MiB, persistent "
            << fmt("%.1f", ex.persistent_bytes() / 1048576.0) << " MiB; threads "
            << (threads > 0 ? std::to_string(threads) : std::string("all")) << "\n";
  if (ckpt) std::cout << "  resumed from " << ckpt->path << " at step " << start_step << "\n";
  if (start_step >= a.steps)
    std::cout << "  the checkpoint is at step " << start_step << " >= --steps " << a.steps
              << ": nothing to train (raise --steps to continue)\n";
  if (!a.dump_first_step.empty() && start_step > 0)
    std::cerr << "lora-run: warning: --dump-first-step ignored: resuming after step 1\n";

  ProgressBar progress(a.steps, std::max<int64_t>(1, a.log_every));
  auto run_validation = [&](int64_t step) -> Status {
    if (!val_file) return Status::ok();
    auto vl = validate(ex, val);
    if (!vl) return vl.status();
    if (Status s = metrics.write({{"step", step}, {"val_loss", *vl}}); !s) return s;
    progress.finish();  // ends an in-place progress line first
    std::cerr << "lora-run: step " << step << " val_loss " << fmt("%.6f", *vl) << "\n";
    return Status::ok();
  };
  auto checkpoint = [&](int64_t step, double loss, double lr) -> Status {
    TrainerState st;
    st.step = step;
    st.data = loader.position();
    st.seed = seed;
    st.plan_fingerprint = fingerprint;
    st.extra = {{"loss", loss}, {"lr", lr}, {"tokens", step * tokens_per_step}};
    std::string saved;
    return save_checkpoint(a.out, st, plan.lora, base_model, named_tensors(ex, plan::BufferKind::Trainable),
                           named_tensors(ex, plan::BufferKind::OptState), &saved, static_cast<int>(a.keep_last));
  };

  if (start_step == 0)
    if (Status s = run_validation(0); !s) return fail("validation before training: " + s.message());

  // The micro-batch logits for --dump-first-step: input 0 of micro_step's cross_entropy_fwd,
  // copied right after that instruction (the arena reuses its bytes later).
  std::vector<float> dump_logits;
  std::vector<int64_t> dump_logits_shape;
  Executor::InstrHook capture = [&](size_t, const KernelCall &c) {
    if (c.instr->op != "cross_entropy_fwd" || c.in.empty() || !c.in[0].present()) return;
    dump_logits.assign(c.in[0].f32(), c.in[0].f32() + c.in[0].numel());
    dump_logits_shape = c.in[0].shape;
  };

  std::vector<int32_t> block(static_cast<size_t>(micro_batch * plan.seq_len));
  std::vector<double> step_tps;
  double last_loss = std::nan(""), last_lr = 0;
  for (int64_t s = start_step + 1; s <= a.steps; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    for (int64_t m = 0; m < plan.micro_batches; ++m) {
      if (Status st = loader.next(micro_batch, block.data()); !st) return fail("--data " + a.data + ": " + st.message());
      if (Status st = feed_block(ex, block); !st) return fail(st.message());
      bool dump = s == 1 && m == 0 && !a.dump_first_step.empty();
      Status st = dump ? ex.run("micro_step", nullptr, capture) : ex.run("micro_step", nullptr);
      if (!st) return fail("step " + std::to_string(s) + ", micro_step " + std::to_string(m) + ": " + st.message());
      loss_sum += ex.loss();
      if (dump) {
        if (Status d = dump_first_step(a.dump_first_step, ex, ex.loss(), dump_logits, dump_logits_shape); !d)
          return fail("--dump-first-step: " + d.message());
        std::cout << "  first micro-step dumped to " << a.dump_first_step << "\n";
      }
    }
    StepState state;
    state.step = s;
    state.lr = lr_at_step(plan.hparams, s, a.steps);
    if (Status st = ex.run("optimizer_step", &state); !st)
      return fail("step " + std::to_string(s) + ", optimizer_step: " + st.message());
    double dt = seconds_since(t0);
    last_loss = loss_sum / static_cast<double>(plan.micro_batches);
    last_lr = state.lr;
    double tps = dt > 0 ? tokens_per_step / dt : 0;
    if (s > start_step + 1) step_tps.push_back(tps);
    json rec = {{"step", s},
                {"loss", last_loss},
                {"lr", state.lr},
                {"grad_norm", state.grad_norm},
                {"tokens", s * tokens_per_step},
                {"tokens_per_s", tps},
                {"step_time_s", dt},
                {"peak_rss_mib", peak_rss_mib()},
                {"arena_mib", ex.arena_bytes() / 1048576.0},
                {"skipped", !state.grad_norm_finite}};
    if (Status st = metrics.write(rec); !st) return fail(st.message());
    progress.update(s, last_loss, tps, state.lr);
    if (!state.grad_norm_finite) {
      progress.finish();
      std::cerr << "lora-run: warning: step " << s << ": gradient norm is not finite; update skipped\n";
    }
    if (val_file && ((a.val_every > 0 && s % a.val_every == 0) || s == a.steps))
      if (Status st = run_validation(s); !st) return fail("validation at step " + std::to_string(s) + ": " + st.message());
    if (a.save_every > 0 && s % a.save_every == 0 && s != a.steps) {
      if (Status st = checkpoint(s, last_loss, state.lr); !st)
        return fail("checkpoint at step " + std::to_string(s) + ": " + st.message());
    }
  }
  progress.finish();

  // Final adapter, checkpoint and summary.
  if (Status s = write_peft_adapter(a.out + "/adapter", plan.lora, base_model, named_tensors(ex, plan::BufferKind::Trainable)); !s)
    return fail(s.message());
  if (a.steps > start_step)
    if (Status s = checkpoint(a.steps, last_loss, last_lr); !s) return fail("final checkpoint: " + s.message());

  double median_tps = 0;
  if (!step_tps.empty()) {
    std::vector<double> v = step_tps;
    std::sort(v.begin(), v.end());
    median_tps = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  }
  double wall = seconds_since(t_start);
  json summary = {{"plan", a.plan},
                  {"plan_fingerprint", fingerprint},
                  {"steps", a.steps},
                  {"start_step", start_step},
                  {"final_loss", last_loss},
                  {"tokens_per_s_median", median_tps},
                  {"wall_time_s", wall},
                  {"peak_rss_mib", peak_rss_mib()},
                  {"arena_mib", ex.arena_bytes() / 1048576.0},
                  {"persistent_mib", ex.persistent_bytes() / 1048576.0},
                  {"adapter", a.out + "/adapter"},
                  {"threads", threads}};
  std::ostringstream prof;
  if (a.profile) {
    json pj = json::object();
    std::vector<std::pair<std::string, OpProfile>> ops(ex.profile().begin(), ex.profile().end());
    std::sort(ops.begin(), ops.end(), [](auto &x, auto &y) { return x.second.seconds > y.second.seconds; });
    double total = 0;
    for (auto &o : ops) total += o.second.seconds;
    prof << "  profile (kernel time " << fmt("%.3f", total) << " s):\n";
    char line[256];
    std::snprintf(line, sizeof line, "    %-20s %10s %8s %7s %10s\n", "op", "seconds", "calls", "share", "GFLOP/s");
    prof << line;
    for (auto &[name, p] : ops) {
      double gflops = p.seconds > 0 ? p.flops / p.seconds / 1e9 : 0;
      std::snprintf(line, sizeof line, "    %-20s %10.4f %8lld %6.1f%% %10.2f\n", name.c_str(), p.seconds,
                    static_cast<long long>(p.calls), total > 0 ? 100.0 * p.seconds / total : 0.0, gflops);
      prof << line;
      pj[name] = {{"seconds", p.seconds}, {"calls", p.calls}, {"flops", p.flops}};
    }
    summary["profile"] = pj;
  }
  {
    std::ofstream os(a.out + "/summary.json");
    os << summary.dump(2) << "\n";
    if (!os) return fail("cannot write " + a.out + "/summary.json");
  }
  std::cout << "lora-run: done: " << a.steps << " steps, final loss " << fmt("%.6f", last_loss) << ", "
            << fmt("%.0f", median_tps) << " tokens/s (median, first step excluded), wall " << fmt("%.2f", wall)
            << " s, peak RSS " << fmt("%.0f", peak_rss_mib()) << " MiB\n"
            << "  adapter: " << a.out << "/adapter, metrics: " << metrics_path << ", summary: " << a.out
            << "/summary.json\n"
            << prof.str();
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"lora-run: train LoRA adapters by executing a plan compiled by lora-compile (CPU backend).\n"
               "Each optimizer step runs the plan's micro_step on every micro-batch (forward, loss, backward,\n"
               "gradient accumulation), then optimizer_step (global-norm clipping + AdamW)."};
  app.footer(
      "Outputs in --out:\n"
      "  metrics.jsonl      one line per step: step, loss (mean over micro-batches), lr, grad_norm (before\n"
      "                     clipping), tokens (seen so far), tokens_per_s, step_time_s, peak_rss_mib, arena_mib,\n"
      "                     skipped (non-finite gradient); with --val-data also {step, val_loss} lines\n"
      "                     (step 0 = before training)\n"
      "  adapter/           the final PEFT LoRA adapter (PeftModel.from_pretrained(base, 'out/adapter'))\n"
      "  checkpoint-N/      resumable checkpoints (every --save-every steps and at the end); latest names the newest\n"
      "  summary.json       steps, final loss, median tokens/s (first step excluded), wall time, peak RSS\n"
      "\n"
      "Examples:\n"
      "  lora-run --describe plan.lp --verbose\n"
      "  lora-run plan.lp --data train.bin --val-data val.bin --val-every 50 --steps 500 --out runs/a\n"
      "  lora-run plan.lp --data train.bin --steps 1000 --out runs/a --resume runs/a      (continue after a stop)\n"
      "  lora-run plan.lp --data train.bin --steps 20 --out runs/b --weights ~/models/llama --init-adapter runs/a/adapter\n"
      "  OMP_NUM_THREADS=8 lora-run plan.lp --data train.bin --steps 10 --out /tmp/r --profile\n"
      "\n"
      "Exit codes: 0 success, 1 runtime error (files, data, kernels), 2 command-line error.");
  Args a;
  app.add_option("plan", a.plan, "the plan file written by lora-compile -o plan.lp");
  app.add_flag("--describe", a.describe, "print what the plan computes (model, LoRA, hyperparameters, memory, FLOPs, programs) and exit");
  app.add_flag("--verbose", a.verbose, "with --describe: also list every buffer and instruction");
  app.add_option("--data", a.data, "training tokens: llm.c .bin file (uint16/uint32 tokens) or raw token file");
  app.add_option("--data-format", a.data_format, "token file format (auto: llm.c header required; u16/u32: raw little-endian)")
      ->check(CLI::IsMember({"auto", "llmc", "u16", "u32"}));
  app.add_option("--val-data", a.val_data, "validation tokens (same format); evaluated before training, every --val-every steps and at the end");
  app.add_option("--val-every", a.val_every, "validate every K steps (0: only before and after training)")->check(at_least(0));
  app.add_option("--val-batches", a.val_batches, "validation batches from the start of --val-data, unshuffled (0: all)")->check(at_least(0));
  app.add_option("--steps", a.steps, "train until this optimizer step (with --resume: the total, not additional steps)")->check(at_least(1));
  app.add_option("--seed", a.seed, "seed of the adapter init and the data shuffle (default 42; --resume keeps the checkpoint's)");
  app.add_flag("--shuffle,!--no-shuffle", a.shuffle, "shuffle the training sequences each epoch (default) / read them in file order");
  app.add_option("--out", a.out, "output directory (created): metrics, adapter, checkpoints, summary");
  app.add_option("--weights", a.weights, "base model weights (HF dir with model.safetensors[.index.json] or a .safetensors file); default: the path recorded in the plan");
  auto *init_opt = app.add_option("--init-adapter", a.init_adapter, "start from this PEFT adapter directory instead of the plan's adapter init");
  auto *resume_opt = app.add_option("--resume", a.resume, "continue from a checkpoint-N directory, or an out dir (uses its `latest`); bit-identical to an uninterrupted run");
  init_opt->excludes(resume_opt);
  app.add_option("--save-every", a.save_every, "write a checkpoint every K steps (0: only at the end)")->check(at_least(0));
  app.add_option("--keep-last", a.keep_last, "keep only the newest K checkpoints (0: keep all)")->check(at_least(0));
  app.add_option("--threads", a.threads, "CPU threads (default: OMP_NUM_THREADS, else all cores)")->check(at_least(0));
  app.add_option("--log-every", a.log_every, "progress line every K steps when stderr is not a terminal")->check(at_least(1));
  app.add_flag("--profile", a.profile, "time every kernel and print a per-op table at the end (also in summary.json)");
  app.add_option("--dump-first-step", a.dump_first_step, "write loss, logits and every grad.<param> after the first micro-step to this .safetensors file (parity tests)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  auto usage = [](const std::string &msg) {
    std::cerr << "error: " << msg << " (see lora-run --help)\n";
    return 2;
  };
  if (a.plan.empty()) return usage("give the plan file: lora-run plan.lp --data tokens.bin --steps N --out dir/");
  if (a.describe) return describe(a);
  if (a.verbose) return usage("--verbose only applies to --describe");
  if (a.data.empty()) return usage("--data is required for training (an llm.c token file)");
  if (a.steps <= 0) return usage("--steps is required for training");
  if (a.out.empty()) return usage("--out is required for training (the output directory)");
  return train(a);
}
