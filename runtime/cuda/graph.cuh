//===- graph.cuh - CUDA graph capture: what the kernels need to know ------------===//
//
// MemoryHooks::run_program (backend.cu) captures a program's kernel launches into a CUDA graph
// on its second run and replays the graph afterwards (graph.cu; the per-kernel audit is at the
// top of graph.cu). While it captures, the kernels run as usual on this thread, but nothing they
// enqueue executes, and the graph bakes in every launch argument. So a kernel entry point must,
// while capturing():
//   - never wait for the stream or read device results on the host (sync_stream() refuses the
//     capture by itself: common.cuh), never allocate or free (the scratch pools refuse to grow);
//   - read every per-call value from device memory, never from host state computed per call;
//   - else call refuse_capture(why) and return its error at once: the capture is abandoned and
//     the program runs eagerly from then on (never an error of the run).
// Data-dependent checks that need the host (a bad token id or label, reported with its value and
// position) take a device error word from check_word() and register a host check with
// defer_check(): it runs after every replay of the graph, once the stream is idle.
// Grow-only scratch must not free a block a graph may still use: once graphs_exist(), a block
// being replaced is retired (kept alive for the process) instead of freed.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "runtime/base/status.h"

namespace parallora::rt::cuda::graph {

/// True while this thread captures a program for run_program.
bool capturing();

/// While capturing: marks the capture as failed (the program then runs eagerly from now on) and
/// returns the error the kernel must return at once ("not capturable: <why>"). Not capturing:
/// Status::ok() (the caller goes on with its host work).
Status refuse_capture(const std::string &why);

/// True once a graph has been captured in this process (its launches use the scratch blocks of
/// that moment).
bool graphs_exist();

/// Keeps a block alive for the process instead of freeing it (a graph may still use it).
/// `managed`: cudaMallocManaged memory (else cudaMalloc / cudaMallocAsync memory).
void retire(void *p, bool managed);

/// While capturing: a device-visible (managed) 64-bit word owned by the graph being captured,
/// for one call site's device-side check; the kernel sets it on the stream (memset) inside the
/// capture. Error (refusing the capture) when the graph has no word left or not capturing.
StatusOr<unsigned long long *> check_word();

/// While capturing: a host check run after every replay of the graph (the stream is idle, the
/// check words and the executor's buffers may be read on the host). Its error becomes the run's.
void defer_check(std::function<Status()> check);

} // namespace parallora::rt::cuda::graph

// ------------------------------------------------------------------ backend.cu's side

namespace parallora::rt::cuda::graph {

/// The graphs of one memory() hooks instance (one executor), keyed by (program, slot).
struct Cache;
std::shared_ptr<Cache> new_cache();
/// memory().alloc / .free report their blocks: an allocation after the first run_program (a
/// second executor on the same hooks) or the free of one of the executor's blocks (it is being
/// destroyed) drops every graph of the cache and runs eagerly from then on.
void note_alloc(Cache &cache, void *p);
void note_free(Cache &cache, void *p);
/// MemoryHooks::run_program (file comment of graph.cu).
Status run_program(Cache &cache, const std::string &program, int slot, const std::function<Status()> &eager);

} // namespace parallora::rt::cuda::graph
