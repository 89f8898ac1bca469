"""The activations' parameters: the one mapping to the ops' (alpha, beta), the layers that pass them through,
and the torch.nn module <-> (name, params) helpers of dlkernels.nn.layers."""
import pytest
import torch
from torch import nn

import dlkernels
from dlkernels import contract, reference
from dlkernels.nn.layers import activation_module, activation_name, activation_params
from conftest import make_input, require_native


def test_activation_args_defaults_and_values():
    assert contract.activation_args("leaky_relu") == (0.01, 0.0)
    assert contract.activation_args("leaky_relu", {"negative_slope": 0.2}) == (0.2, 0.0)
    assert contract.activation_args("hardtanh") == (-1.0, 1.0)
    assert contract.activation_args("hardtanh", {"max_val": 3}) == (-1.0, 3.0)
    assert contract.activation_args("elu", {"alpha": 0.5}) == (0.5, 0.0)
    assert contract.activation_args("relu6") == (0.0, 6.0)
    assert contract.activation_args("mish", {}) == (0.0, 0.0)
    for name in contract.ACTIVATIONS:  # every activation has its table entries, in the C++ order
        assert contract.grad_needs_output(name) + contract.grad_needs_preactivation(name) == (name != "none")


@pytest.mark.parametrize("module", [nn.ReLU6(), nn.Hardtanh(-2.0, 0.5), nn.Hardswish(), nn.Hardsigmoid(),
                                    nn.LeakyReLU(0.3), nn.ELU(alpha=0.4), nn.Mish(), nn.ReLU6(inplace=True)])
def test_module_round_trip(module):
    name, params = activation_name(module), activation_params(module)
    assert name is not None
    back = activation_module(name, params)
    assert type(back) is type(module)
    z = make_input(50, dtype=torch.float64) * 5
    torch.testing.assert_close(back(z.clone()), module(z.clone()))
    torch.testing.assert_close(reference.activation(z, name, params), module(z.clone()))


def test_unsupported_module_parameters_are_not_fused():
    assert activation_name(nn.LeakyReLU(-0.1)) is None
    assert activation_name(nn.ELU(alpha=-1.0)) is None
    assert activation_name(nn.Hardtanh(2.0, 3.0)) == "hardtanh"


@pytest.mark.parametrize("cls,args,x_shape", [(dlkernels.nn.Linear, (6, 4), (3, 6)),
                                              (dlkernels.nn.Conv2d, (2, 4, 3), (1, 2, 6, 6))])
def test_layers_pass_params_through(cls, args, x_shape):
    require_native("cpu")
    params = {"negative_slope": 0.25}
    layer = cls(*args, activation="leaky_relu", activation_params=params, backend="native").double()
    torch_layer = layer.to_torch()
    assert set(layer.state_dict()) == set(torch_layer.state_dict())
    assert "activation_params={'negative_slope': 0.25}" in repr(layer)
    assert not hasattr(torch_layer, "activation_params")
    x = make_input(*x_shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), nn.functional.leaky_relu(torch_layer(x), 0.25))
    act = layer.activation_module()
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.25
    with pytest.raises(ValueError, match="activation_params"):
        cls(*args, activation="relu", activation_params=params)
