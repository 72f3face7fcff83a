// libFuzzer target for plan files (runtime/plan/plan_io.h). Input byte 0 picks the layer:
//   odd:  the rest is a whole plan file, read from disk by read_plan (magic, version, length,
//         CRC framing);
//   even: the rest is the protobuf payload, framed here with a correct header and CRC, so the
//         mutations reach the protobuf parse, from_pb and validate_plan instead of all dying
//         at the CRC check.
// A plan that loads has passed validation, so describing it (every instruction, operands
// looked up by id) must not index out of range, and it must survive encode + decode unchanged.
#include "runtime/plan/plan_io.h"

#include <cstdint>
#include <cstdlib>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "tests/fuzz/fuzz_files.h"

using namespace parallora;

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  // Parse failures are expected here; protobuf's log lines about them would flood the output.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

namespace {

void put_le(std::string &s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *body = data + 1;
  const size_t body_size = size - 1;
  StatusOr<plan::Plan> plan = Status::error("unset");
  if (data[0] & 1) {
    const std::string path = fuzz::scratch_dir() + "/plan.lp";
    fuzz::put_file(path, body, body_size, true);
    plan = plan::read_plan(path);
  } else {
    std::string file(plan::kPlanMagic, 8);
    put_le(file, plan::kPlanFormatVersion, 4);
    put_le(file, body_size, 8);
    file.append(reinterpret_cast<const char *>(body), body_size);
    put_le(file, plan::crc32(body, body_size), 4);
    plan = plan::decode_plan(file, "fuzz.lp");
  }
  if (!plan) {
    if (plan.message().empty()) std::abort();  // every failure says why
    return 0;
  }
  std::string text = plan::describe_plan(*plan, /*verbose=*/true);
  if (text.empty()) std::abort();
  auto again = plan::decode_plan(plan::encode_plan(*plan), "round-trip");
  if (!again || plan::plan_fingerprint(*again) != plan::plan_fingerprint(*plan)) std::abort();
  return 0;
}
