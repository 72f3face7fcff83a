// --adamw: @optimizer_step with one pl.adamw_step over every gradient @train_step accumulates
// (in @train_step's order), and the hyperparameters + LR schedule in the module's pl.train.
// RUN: lora-opt %s --adamw | FileCheck %s --check-prefix=DEFAULT
// RUN: lora-opt %s --adamw="lr=3e-4 beta1=0.8 beta2=0.95 eps=1e-6 weight-decay=0.1 max-grad-norm=0 schedule=linear warmup-steps=10 min-lr-ratio=0.1 total-steps=100" \
// RUN:   | FileCheck %s --check-prefix=SET

// Defaults: torch.optim.AdamW's betas/eps, no weight decay, clipping at 1, constant lr 1e-4.
// (0.999 and 0.95 print as their nearest doubles.)
// DEFAULT: module attributes {pl.train = {beta1 = 9.000000e-01 : f64, beta2 = 0.99899999999999999 : f64, eps = 1.000000e-08 : f64, lr = 1.000000e-04 : f64, max_grad_norm = 1.000000e+00 : f64, min_lr_ratio = 0.000000e+00 : f64, schedule = "constant", total_steps = 0 : i64, warmup_steps = 0 : i64, weight_decay = 0.000000e+00 : f64}}
// @train_step is left as it is.
// DEFAULT-LABEL: func.func @train_step
// DEFAULT-COUNT-2: pl.accumulate_grad
// DEFAULT-LABEL: func.func @optimizer_step() {
// DEFAULT-NEXT: pl.adamw_step {beta1 = 9.000000e-01 : f64, beta2 = 0.99899999999999999 : f64, eps = 1.000000e-08 : f64, max_grad_norm = 1.000000e+00 : f64, params = ["q.lora_A.weight", "q.lora_B.weight"], weight_decay = 0.000000e+00 : f64}
// DEFAULT-NEXT: return

// SET: module attributes {pl.train = {beta1 = 8.000000e-01 : f64, beta2 = 0.94999999999999996 : f64, eps = 9.9999999999999995E-7 : f64, lr = 3.000000e-04 : f64, max_grad_norm = 0.000000e+00 : f64, min_lr_ratio = 1.000000e-01 : f64, schedule = "linear", total_steps = 100 : i64, warmup_steps = 10 : i64, weight_decay = 1.000000e-01 : f64}}
// SET-LABEL: func.func @optimizer_step() {
// SET-NEXT: pl.adamw_step {beta1 = 8.000000e-01 : f64, beta2 = 0.94999999999999996 : f64, eps = 9.9999999999999995E-7 : f64, max_grad_norm = 0.000000e+00 : f64, params = ["q.lora_A.weight", "q.lora_B.weight"], weight_decay = 1.000000e-01 : f64}

func.func @train_step(%ga: tensor<2x4xf32>, %gb: tensor<4x2xf32>) {
  pl.accumulate_grad %ga {param = "q.lora_A.weight"} : tensor<2x4xf32>
  pl.accumulate_grad %gb {param = "q.lora_B.weight"} : tensor<4x2xf32>
  return
}
