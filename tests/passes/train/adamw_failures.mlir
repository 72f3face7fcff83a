// Input and options --adamw refuses: each error names the value at fault.
// RUN: lora-opt %s -split-input-file -verify-diagnostics --adamw
// RUN: not lora-opt %S/adamw.mlir --adamw="lr=0" 2>&1 | FileCheck %s --check-prefix=LR
// RUN: not lora-opt %S/adamw.mlir --adamw="schedule=step" 2>&1 | FileCheck %s --check-prefix=SCHED
// RUN: not lora-opt %S/adamw.mlir --adamw="warmup-steps=-1" 2>&1 | FileCheck %s --check-prefix=WARMUP
// RUN: not lora-opt %S/adamw.mlir --adamw="min-lr-ratio=1.5" 2>&1 | FileCheck %s --check-prefix=FLOOR
// RUN: not lora-opt %S/adamw.mlir --adamw="beta1=1.0" 2>&1 | FileCheck %s --check-prefix=BETA
// RUN: not lora-opt %S/adamw.mlir --adamw="weight-decay=-0.1" 2>&1 | FileCheck %s --check-prefix=WD

// LR: error: adamw: lr must be > 0
// SCHED: error: adamw: schedule 'step' is not one of constant, cosine, linear
// WARMUP: error: adamw: warmup-steps and total-steps must be >= 0
// FLOOR: error: adamw: min-lr-ratio must be in [0, 1]
// The op's verifier, run by the pass before it adds anything.
// BETA: error: loc("optimizer"): 'pl.adamw_step' op betas must be in [0, 1), got (1, 0.999)
// WD: error: loc("optimizer"): 'pl.adamw_step' op weight_decay must be >= 0

// No @train_step: the loss and gradients come first.
// expected-error @+1 {{adamw: no func @train_step; run --append-loss and --autodiff first}}
module {
  func.func @forward(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
    return %x : tensor<2x4xf32>
  }
}

// -----

// @train_step without gradients (autodiff not run, or nothing trains).
// expected-error @+1 {{adamw: @train_step accumulates no gradients; run --autodiff first}}
func.func @train_step(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {
  return %x : tensor<2x4xf32>
}
