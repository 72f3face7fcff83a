//===- stop_signals.cpp - SIGINT / SIGTERM as a request to stop cleanly ----===//
#include "runtime/train/stop_signals.h"

#include <unistd.h>

namespace parallora::rt {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
static_assert(sizeof(std::sig_atomic_t) == sizeof(int), "flag() hands the flag out as an int");

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {  // the second signal: exit at once
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
  static const char msg[] =
      "\nlora-run: stop requested: finishing this step, then saving a checkpoint and the adapter "
      "(signal again to exit at once)\n";
  ssize_t ignored = ::write(2, msg, sizeof msg - 1);  // async-signal-safe
  (void)ignored;
}

} // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

int StopSignals::pending() { return g_stop_signal; }

const volatile int *StopSignals::flag() { return reinterpret_cast<const volatile int *>(&g_stop_signal); }

const char *StopSignals::name(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a stop signal";
}

} // namespace parallora::rt
