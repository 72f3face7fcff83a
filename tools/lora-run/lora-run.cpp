//===- lora-run.cpp - train LoRA adapters by executing a compiled plan ----===//
//
//   lora-run plan.lp --data tokens.bin --steps N --out dir/ [options]   train
//   mpirun -np N lora-run plan.lp ...                                    train a plan of N ranks
//   lora-run --describe plan.lp [--verbose]                              inspect a plan
//   ... --trace run/trace.json --viz run/viz/   after training, rank 0 writes the plan viewer
//                                               with the measured step (tools/lora-compile/viz.h)
//
// Argument parsing around the training session (runtime/train/session.h), which does the work.
// A rank that fails prints "rank R: error: ..." and ends the job (MPI_Abort), so no rank is
// left waiting.
//
// Exit codes: 0 success, 1 a runtime error (missing or bad file, kernel error), 2 a command
// line error. Every error names the file or flag involved.
//
//===----------------------------------------------------------------------===//
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "runtime/cpu/blas_core.h"
#include "runtime/plan/plan_io.h"
#include "tools/common/cli.h"
#include "tools/lora-compile/viz.h"
#include "runtime/train/session.h"

using namespace parallora;
using namespace parallora::rt;

namespace {

/// libgomp's wait policy, chosen before libgomp starts: it reads OMP_WAIT_POLICY when it is
/// loaded, before main, so when the user has not chosen a policy lora-run sets one and
/// re-executes itself once (same pid, before MPI_Init; mpirun's environment is kept; if the exec
/// fails the run goes on with libgomp's default). The rule (measured side by side,
/// docs/benchmarks.md "CPU levers"):
///   ACTIVE  when the GEMMs run on OpenMP's pool (oneDNN, or OpenBLAS's OpenMP build: one thread
///           pool for GEMMs and our loops) and this
///           host's ranks x threads per rank fit the cores: spinning workers pick up each kernel
///           at once (1.22x torch vs 0.86x with PASSIVE on bench_cpu.sh, 2 threads on 2 cores);
///   PASSIVE otherwise: with more threads than cores (several ranks, or --threads above the
///           cores) a spinning team waits for descheduled members, and with OpenBLAS's pthread
///           build two pools fight over the cores (2.2x slower steps, session 3).
/// The ranks of this host come from mpirun's OMPI_COMM_WORLD_LOCAL_SIZE (Open MPI) or
/// MPI_LOCALNRANKS (MPICH); threads from --threads, else OMP_NUM_THREADS, else all cores.
extern "C" int openblas_get_parallel(void) __attribute__((weak));

long env_long(const char *name, long fallback) {
  const char *v = std::getenv(name);
  if (!v || !*v) return fallback;
  char *end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return end && *end == '\0' && x > 0 ? x : fallback;
}

void choose_omp_wait_policy(int argc, char **argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  const long cores = std::max(1L, long(std::thread::hardware_concurrency()));
  long threads = env_long("OMP_NUM_THREADS", cores);
  for (int i = 1; i < argc; ++i) {  // the last --threads wins, as in CLI11; 0 = all cores
    std::string arg = argv[i], value;
    if (arg == "--cpu-gemm" && i + 1 < argc) setenv("PARALLORA_CPU_GEMM", argv[i + 1], 1);
    else if (arg.rfind("--cpu-gemm=", 0) == 0) setenv("PARALLORA_CPU_GEMM", arg.substr(11).c_str(), 1);
    if (arg == "--threads" && i + 1 < argc) value = argv[i + 1];
    else if (arg.rfind("--threads=", 0) == 0) value = arg.substr(10);
    else continue;
    char *end = nullptr;
    const long x = std::strtol(value.c_str(), &end, 10);
    if (end && *end == '\0' && x >= 0) threads = x == 0 ? cores : x;
  }
  const long local_ranks = env_long("OMPI_COMM_WORLD_LOCAL_SIZE", env_long("MPI_LOCALNRANKS", 1));
  // oneDNN's GEMMs run on libgomp's pool; OpenBLAS's only in its OpenMP build (parallel == 2).
  const char *gemm = std::getenv("PARALLORA_CPU_GEMM");
  const bool onednn = cpu::gemm_library_available(cpu::GemmLibrary::kOneDnn) && !(gemm && std::string(gemm) == "openblas");
  const bool one_pool = onednn || (openblas_get_parallel && openblas_get_parallel() == 2);
  setenv("OMP_WAIT_POLICY", one_pool && local_ranks * threads <= cores ? "ACTIVE" : "PASSIVE", 1);
  execv("/proc/self/exe", argv);
}

struct Args {
  SessionOptions session;
  bool describe = false, verbose = false;
  std::string viz;          // --viz: the plan viewer with the run's measured step (needs --trace)
  int64_t viz_step = -1;    // --viz-step
};

/// --viz: the plan's viewer (lora-compile --viz) with one step of the run's trace drawn beside
/// the prediction; rank 0, after the session.
int write_viewer(const Args &a) {
  auto plan = plan::read_plan(a.session.plan);
  if (!plan) {
    std::cerr << "error: --viz " << a.viz << ": " << plan.message() << "\n";
    return 1;
  }
  if (Status s = write_plan_viz(*plan, a.viz, std::cout, VizOptions{a.session.trace, a.viz_step}); !s) {
    std::cerr << "error: --viz " << a.viz << ": " << s.message() << "\n";
    return 1;
  }
  return 0;
}

int describe(const Args &a) {
  auto plan = plan::read_plan(a.session.plan);
  if (!plan) {
    std::cerr << "error: " << plan.message() << "\n";
    return 1;
  }
  std::cout << plan::describe_plan(*plan, a.verbose);
  return 0;
}

/// Runs the session; a failure is "error: ..." (one rank, or the same on every rank: rank 0
/// says it) or "rank R: error: ..." followed by MPI_Abort, which ends the other ranks.
int train(const Args &a) {
  const SessionOptions &o = a.session;
  World world;
  SessionOutcome outcome;
  Status s = run_session(o, world, &outcome);
  if (s) {
    finalize_world(world);
    return world.rank == 0 && !a.viz.empty() ? write_viewer(a) : 0;
  }
  if (world.size <= 1 || outcome.same_on_every_rank) {
    if (world.rank == 0) std::cerr << "error: " << s.message() << "\n";
    finalize_world(world);
    return outcome.exit_code;
  }
  // One write, so mpirun forwards the line whole (not interleaved with other ranks' output).
  std::fflush(stdout);
  const std::string line = "rank " + std::to_string(world.rank) + ": error: " + s.message() + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
  abort_world(world, 1);
}

} // namespace

int main(int argc, char **argv) {
  choose_omp_wait_policy(argc, argv);
  CLI::App app{"lora-run: train LoRA adapters by executing a plan compiled by lora-compile (CPU backend;\n"
               "--backend cuda runs the same kernels on a GPU when lora-run was built with CUDA).\n"
               "Each optimizer step runs the plan's micro_step on every micro-batch (forward, loss, backward,\n"
               "gradient accumulation), then optimizer_step (global-norm clipping + AdamW)."};
  app.footer(
      "Outputs in --out:\n"
      "  metrics.jsonl      one line per step: step, time_s (since start), loss (mean over micro-batches), lr, grad_norm (before\n"
      "                     clipping), tokens (seen so far), tokens_per_s, step_time_s, peak_rss_mib, arena_mib,\n"
      "                     skipped (non-finite gradient), compute_s / comm_s / idle_s (rank 0's step time split),\n"
      "                     with --backend cuda gpu_mem_used_mib and gpu_util (NVML); with --val-data also\n"
      "                     {step, val_loss} lines\n"
      "                     (step 0 = before training)\n"
      "  adapter/           the final PEFT LoRA adapter (PeftModel.from_pretrained(base, 'out/adapter'))\n"
      "  checkpoint-N/      resumable checkpoints (every --save-every steps and at the end); latest names the newest\n"
      "  summary.json       complete (true), steps, tokens_per_step, final loss, median tokens/s (first step excluded), wall time, peak RSS,\n"
      "                     time split (per rank), mfu (null without a known peak), GPU memory and utilization\n"
      "\n"
      "Examples:\n"
      "  lora-run --describe plan.lp --verbose\n"
      "  lora-run plan.lp --data train.bin --val-data val.bin --val-every 50 --steps 500 --out runs/a\n"
      "  lora-run plan.lp --data train.bin --steps 1000 --out runs/a --resume runs/a      (continue after a stop)\n"
      "  lora-run plan.lp --data train.bin --steps 20 --out runs/b --weights ~/models/llama --init-adapter runs/a/adapter\n"
      "  OMP_NUM_THREADS=8 lora-run plan.lp --data train.bin --steps 10 --out /tmp/r --profile\n"
      "\n"
      "Multi-rank plans (lora-compile --dp/--tp/--pp): launch one process per rank, e.g.\n"
      "  mpirun -np 4 lora-run plan.lp --data train.bin --steps 100 --out runs/p\n"
      "  (as root add OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1). Rank 0 prints progress and writes\n"
      "  metrics/summary (with per-rank bytes sent, measured vs predicted) and the full adapter; checkpoints hold\n"
      "  the adapter and AdamW moments whole (resumable under another mesh). A failing rank aborts the whole job (MPI_Abort).\n"
      "  Testing aid: PARALLORA_TEST_FAIL_RANK=r PARALLORA_TEST_FAIL_STEP=s make rank r fail at step s.\n"
      "\n"
      "Exit codes: 0 success, 1 runtime error (files, data, kernels), 2 command-line error.");
  Args a;
  SessionOptions &o = a.session;
  app.add_option("plan", o.plan, "the plan file written by lora-compile -o plan.lp");
  app.add_flag("--describe", a.describe, "print what the plan computes (model, LoRA, hyperparameters, memory, FLOPs, programs) and exit");
  app.add_flag("--verbose", a.verbose, "with --describe: also list every buffer and instruction");
  app.add_option("--data", o.data, "training tokens: llm.c .bin file (uint16/uint32 tokens) or raw token file; with a label-mask file X.mask next to X.bin (scripts/prepare_data.py) its examples, labels masked as prepared");
  app.add_option("--data-layout", o.data_layout, "rows of fine-tuning examples (X.mask present): packed (several examples a row; needs a plan compiled with --packing), padded (one a row), auto (packed when the plan takes segment_ids)")
      ->check(CLI::IsMember({"auto", "packed", "padded"}));
  app.add_option("--data-format", o.data_format, "token file format (auto: llm.c header required; u16/u32: raw little-endian)")
      ->check(CLI::IsMember({"auto", "llmc", "u16", "u32"}));
  app.add_option("--val-data", o.val_data, "validation tokens (same format); evaluated before training, every --val-every steps and at the end");
  app.add_option("--val-every", o.val_every, "validate every K steps (0: only before and after training)")->check(cli::at_least(0));
  app.add_option("--val-batches", o.val_batches, "validation batches from the start of --val-data, unshuffled (0: all)")->check(cli::at_least(0));
  app.add_option("--steps", o.steps, "train until this optimizer step (with --resume: the total, not additional steps)")->check(cli::at_least(1));
  app.add_option("--seed", o.seed, "seed of the adapter init and the data shuffle (default 42; --resume keeps the checkpoint's)");
  app.add_flag("--shuffle,!--no-shuffle", o.shuffle, "shuffle the training sequences each epoch (default) / read them in file order");
  app.add_option("--out", o.out, "output directory (created with its parents; locked while the run lives): metrics, adapter, "
                                 "checkpoints, summary. A directory holding another run is refused unless --resume or --overwrite");
  app.add_flag("--overwrite", o.overwrite, "remove the outputs of an earlier run in --out (metrics, summary, adapter, checkpoints) and start fresh");
  app.add_option("--weights", o.weights, "base model weights (HF dir with model.safetensors[.index.json] or a .safetensors file); default: the path recorded in the plan");
  auto *init_opt = app.add_option("--init-adapter", o.init_adapter, "start from this PEFT adapter directory instead of the plan's adapter init");
  auto *resume_opt = app.add_option("--resume", o.resume, "continue from a checkpoint-N directory, or an out dir (uses its `latest`); bit-identical to an uninterrupted run");
  init_opt->excludes(resume_opt);
  app.add_option("--save-every", o.save_every, "write a checkpoint every K steps (0: only at the end)")->check(cli::at_least(0));
  app.add_option("--keep-last", o.keep_last, "keep only the newest K checkpoints (0: keep all)")->check(cli::at_least(0));
  app.add_option("--threads", o.threads, "CPU threads of the cpu backend (default: OMP_NUM_THREADS, else all cores); "
                                         "unless OMP_WAIT_POLICY is set, lora-run sets ACTIVE when this host's ranks x threads fit the "
                                         "cores, else PASSIVE (docs/training.md)")
      ->check(cli::thread_count());
  app.add_option("--cpu-gemm", o.cpu_gemm,
                 "GEMM library of the cpu backend: auto (default: PARALLORA_CPU_GEMM, else oneDNN when built in), "
                 "onednn or openblas (which honours OPENBLAS_CORETYPE). Same bits with any --threads either way")
      ->check(CLI::IsMember({"auto", "onednn", "openblas"}));
  app.add_option("--backend", o.backend,
                 "kernels: cpu (fp32 reference, default) or cuda (one GPU per process: device = local rank % device "
                 "count; multi-rank collectives are host-staged through MPI)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--collectives", o.collectives,
                 "multi-rank collectives: mpi (default; host-staged with --backend cuda, several ranks may share a GPU) "
                 "or nccl (--backend cuda, one GPU per rank)")
      ->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_flag("--cuda-graphs", o.cuda_graphs,
               "--backend cuda: capture each program without collectives once as a CUDA graph and replay it "
               "(experimental: not yet run on a GPU)");
  app.add_option("--log-every", o.log_every, "progress line every K steps when stderr is not a terminal")->check(cli::at_least(1));
  app.add_flag("--profile", o.profile, "time every kernel and print a per-op table at the end (also in summary.json)");
  app.add_option("--trace", o.trace, "write every rank's measured timeline (each instruction, step, data load, validation, "
                                     "checkpoint, collective) to this Chrome trace JSON file (rank 0 merges; open in "
                                     "ui.perfetto.dev; docs/parallel.md \"Reading a trace\")");
  app.add_option("--trace-max-events", o.trace_max_events, "--trace: events kept per rank (64 B each, default 1048576); later ones are dropped and counted")
      ->check(cli::at_least(1));
  app.add_option("--viz", a.viz, "with --trace: after training, write the plan viewer (as lora-compile --viz: index.html, "
                                 "graphs, predicted timeline) into this folder with one measured step of the trace "
                                 "beside the prediction (docs/parallel.md \"The measured timeline in the viewer\")");
  app.add_option("--viz-step", a.viz_step, "--viz: the step drawn (default: the median step, the first excluded)")
      ->check(cli::at_least(1));
  app.add_option("--comm-timeout", o.comm_timeout, "multi-rank: seconds a collective or receive waits for its peers before failing (default 300)")
      ->check(cli::positive_number());
  app.add_option("--peak-tflops", o.peak_tflops,
                 "MFU's peak per device in TFLOP/s (default: the GPU's dense bf16 data-sheet peak by name: H100 SXM/HBM3 "
                 "and H200 989, H100 PCIe 756, A100 312; otherwise, and on the cpu backend, MFU is not reported)")
      ->check(cli::non_negative_number());
  app.add_option("--nonfinite,--on-nonfinite", o.nonfinite,
                 "a NaN/Inf loss, gradient or weight: stop (default: name the step and the first non-finite tensor, "
                 "exit 1, never save a non-finite adapter) or skip (skip that update while every weight stays finite)")
      ->check(CLI::IsMember({"stop", "skip", "skip-step"}));  // skip-step: the same as skip
  app.add_option("--dump-first-step", o.dump_first_step, "write loss, logits and every grad.<param> after the first micro-step to this .safetensors file (parity tests)");

  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  auto usage = [](const std::string &msg) {
    std::cerr << "error: " << msg << " (see lora-run --help)\n";
    return 2;
  };
  if (o.plan.empty()) return usage("give the plan file: lora-run plan.lp --data tokens.bin --steps N --out dir/");
  if (a.describe) return describe(a);
  if (a.verbose) return usage("--verbose only applies to --describe");
  if (o.data.empty()) return usage("--data is required for training (an llm.c token file)");
  if (o.steps <= 0) return usage("--steps is required for training");
  if (o.out.empty()) return usage("--out is required for training (the output directory)");
  if (!a.viz.empty() && o.trace.empty()) return usage("--viz draws the run's trace; give --trace FILE too");
  if (a.viz_step >= 0 && a.viz.empty()) return usage("--viz-step picks the step --viz draws; give --viz dir/ too");
  if (a.viz_step > o.steps) return usage("--viz-step " + std::to_string(a.viz_step) + " is after the last step (--steps " + std::to_string(o.steps) + ")");
  return train(a);
}
