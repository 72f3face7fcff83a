// RUN: lora-opt %s -split-input-file -verify-diagnostics
// Verifier errors of pl.param and pl.constant.

func.func @empty_name() -> tensor<4xf32> {
  // expected-error @+1 {{'pl.param' op needs a non-empty parameter name}}
  %a = pl.param "" : tensor<4xf32>
  return %a : tensor<4xf32>
}

// -----

func.func @dynamic_param() -> tensor<?x4xf32> {
  // expected-error @+1 {{'pl.param' op parameter 'w' must have a static shape, got ?x4}}
  %a = pl.param "w" : tensor<?x4xf32>
  return %a : tensor<?x4xf32>
}

// -----

func.func @empty_init() -> tensor<4xf32> {
  // expected-error @+1 {{'pl.param' op parameter 'w' has an empty init spec}}
  %a = pl.param "w" {init = ""} : tensor<4xf32>
  return %a : tensor<4xf32>
}

// -----

func.func @int_param() -> tensor<4xi32> {
  // expected-error @+1 {{'pl.param' op result #0 must be ranked tensor of floating-point values}}
  %a = pl.param "w" : tensor<4xi32>
  return %a : tensor<4xi32>
}

// -----

func.func @constant_shape() -> tensor<3xi64> {
  // expected-error @+1 {{'pl.constant' op value type 'tensor<2xi64>' does not match result type 'tensor<3xi64>'}}
  %c = pl.constant dense<[1, 2]> : tensor<2xi64> : tensor<3xi64>
  return %c : tensor<3xi64>
}

// -----

func.func @constant_element_type() -> tensor<2xi32> {
  // expected-error @+1 {{'pl.constant' op value type 'tensor<2xi64>' does not match result type 'tensor<2xi32>'}}
  %c = "pl.constant"() {value = dense<[1, 2]> : tensor<2xi64>} : () -> tensor<2xi32>
  return %c : tensor<2xi32>
}
