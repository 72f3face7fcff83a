// libFuzzer target for training checkpoints (runtime/io/checkpoint.h load_checkpoint). Input
// byte 0 picks the layout; the rest is split (fuzz_files.h) into trainer_state.json,
// adapter_config.json, optimizer.safetensors and adapter_model.safetensors:
//   byte0 % 3 == 0: the files form the checkpoint directory given to load_checkpoint;
//   byte0 % 3 == 1: they are <out>/checkpoint-7/ and <out>/latest names it; load_checkpoint(<out>);
//   byte0 % 3 == 2: as 1 without `latest` (the newest complete checkpoint-N is searched).
// Crashes, sanitizer reports and thrown exceptions are bugs; a failure must say why.
#include "runtime/io/checkpoint.h"

#include <cstdint>
#include <cstdlib>
#include <string>

#include <sys/stat.h>

#include "tests/fuzz/fuzz_files.h"

using namespace parallora;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const std::string out = fuzz::scratch_dir();
  const std::string ckpt = out + "/checkpoint-7";
  ::mkdir(ckpt.c_str(), 0755);
  const int layout = data[0] % 3;
  const std::vector<std::string> names = {"trainer_state.json", "adapter_config.json",
                                          "optimizer.safetensors", "adapter_model.safetensors"};
  // The files of the other layout are removed so that each run sees only its own input.
  fuzz::write_files(layout == 0 ? out : ckpt, names, data + 1, size - 1);
  for (const std::string &name : names)
    fuzz::put_file((layout == 0 ? ckpt : out) + "/" + name, nullptr, 0, false);
  static const uint8_t kLatest[] = "checkpoint-7\n";
  fuzz::put_file(out + "/latest", kLatest, sizeof kLatest - 1, layout == 1);

  auto ck = rt::load_checkpoint(out);
  if (!ck) {
    if (ck.message().empty()) std::abort();  // every failure says why
    return 0;
  }
  if (ck->state.step < 0 || ck->adapters.empty()) std::abort();
  return 0;
}
