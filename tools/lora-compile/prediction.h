//===- prediction.h - lora-compile's cost-model hook ------------------------===//
#pragma once

#include <string>

#include "runtime/base/status.h"
#include "runtime/plan/plan.h"

namespace parallora {

/// Costs `p` on the device profile `profile` (a models/devices name or a file; passes/planner),
/// stores the prediction in the plan and sets `report` to the line lora-compile prints. An
/// unreadable profile is an error.
/// With `breakdown`, the report also lists rank 0's predicted seconds per kernel and step.
Status predict_plan(plan::Plan &p, const std::string &profile, std::string &report, bool breakdown = false);

/// models/devices of the source tree (the default profiles).
std::string devices_dir();

} // namespace parallora
