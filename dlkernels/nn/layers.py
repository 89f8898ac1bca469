"""Drop-in replacements for torch.nn.Linear, Conv2d and MaxPool2d that run through dlkernels.ops.

Each layer is a subclass of the torch.nn layer it replaces: same constructor arguments (plus the keyword-only
``activation=`` and ``backend=``), same parameters, same ``state_dict`` keys, so a checkpoint saved from the
torch layer loads into ours and back. ``activation`` is fused into the layer's kernel (``"none"``, ``"relu"``,
``"sigmoid"``, ``"tanh"``, ``"gelu"`` (erf form, ``nn.GELU()``), ``"gelu_tanh"`` (``nn.GELU("tanh")``),
``"silu"``, ``"relu6"``, ``"hardtanh"``, ``"hardswish"``, ``"hardsigmoid"``, ``"leaky_relu"``, ``"elu"``,
``"mish"``), with ``activation_params=`` for the ones that take parameters (torch's names:
``{"negative_slope": 0.2}``, ``{"min_val": -2.0, "max_val": 2.0}``, ``{"alpha": 1.0}``); ``backend`` is
passed to every call of ``dlkernels.ops`` (``"auto"``, ``"native"``, ``"triton"``, ``"reference"``).

    layer = dlkernels.nn.Conv2d(3, 16, 3, padding=1, activation="relu")
    fast = dlkernels.nn.Linear.from_torch(torch_linear, activation="gelu")   # shares torch_linear's parameters
    plain = fast.to_torch()                                                   # back to torch.nn.Linear
"""
import copy

import torch.nn.functional as F
from torch import nn

from .. import autotune, contract, ops
from ..contract import ACTIVATIONS
from ..ops import BACKENDS

__all__ = ["Linear", "Conv2d", "MaxPool2d", "Conv2dMaxPool", "FusedActivation", "FusedMaxPool", "FoldedBatchNorm",
           "activation_name", "activation_params", "activation_module"]


# ---------------------------------------------------------------------------------------------------------
# Activations: the torch.nn modules that can be fused, and back


# The torch.nn modules of each activation, and their parameters as torch names them (the keys of
# dlkernels.contract.ACTIVATION_PARAMS, which are also the modules' attribute names).
_MODULES = {
    nn.ReLU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.SiLU: "silu",
    nn.ReLU6: "relu6",
    nn.Hardtanh: "hardtanh",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.Mish: "mish",
}


def activation_name(module):
    """The dlkernels activation string of a torch.nn activation module that can be fused, else None.

    Only the exact classes count (a subclass may change the function): nn.ReLU -> "relu", nn.Sigmoid ->
    "sigmoid", nn.Tanh -> "tanh", nn.GELU() -> "gelu", nn.GELU(approximate="tanh") -> "gelu_tanh",
    nn.SiLU -> "silu", nn.ReLU6 -> "relu6", nn.Hardtanh -> "hardtanh", nn.Hardswish -> "hardswish",
    nn.Hardsigmoid -> "hardsigmoid", nn.LeakyReLU -> "leaky_relu", nn.ELU -> "elu", nn.Mish -> "mish".
    Their parameters: activation_params(module). A module whose parameters the kernels do not support (a
    negative slope or alpha, min_val > max_val) gives None."""
    kind = type(module)
    if kind is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    name = _MODULES.get(kind)
    if name is None:
        return None
    try:
        contract.activation_args(name, activation_params(module))
    except ValueError:
        return None
    return name


def activation_params(module):
    """torch's parameters of a fusable activation module as the ``activation_params`` dict of dlkernels.ops
    and the layers (e.g. {"negative_slope": 0.2} for nn.LeakyReLU(0.2)); None when it has none."""
    name = _MODULES.get(type(module))
    keys = contract.ACTIVATION_PARAMS.get(name)
    return {key: float(getattr(module, key)) for key in keys} if keys else None


def activation_module(name, activation_params=None):
    """A new torch.nn module computing the dlkernels activation ``name`` with ``activation_params`` (torch's
    keyword arguments; None for "none")."""
    _check_activation(name)
    params = _check_activation_params(name, activation_params) or {}
    return {
        "none": lambda: None,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "silu": nn.SiLU,
        "relu6": nn.ReLU6,
        "hardtanh": lambda: nn.Hardtanh(**params),
        "hardswish": nn.Hardswish,
        "hardsigmoid": nn.Hardsigmoid,
        "leaky_relu": lambda: nn.LeakyReLU(**params),
        "elu": lambda: nn.ELU(**params),
        "mish": nn.Mish,
    }[name]()


def _check_activation_params(activation, activation_params):
    """activation_params checked against the activation (ValueError naming 'activation_params'), as a new dict
    (None when empty)."""
    contract.activation_args(activation, activation_params, "nn")
    return dict(activation_params) if activation_params else None


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"dlkernels.nn: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    return activation


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"dlkernels.nn: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


# ---------------------------------------------------------------------------------------------------------
# Moving a module's state between classes without copying its tensors


def _rebuild(module, cls, drop=()):
    """A new instance of cls holding module's state: the same Parameter and buffer objects (shared, not
    copied), submodules, hooks, training flag and attributes. The containers are copied, so registering a
    parameter or hook on one module later does not change the other."""
    new = cls.__new__(cls)
    state = {}
    for key, value in module.__dict__.items():
        if key in drop:
            continue
        state[key] = copy.copy(value) if isinstance(value, (dict, set, list)) else value
    new.__dict__.update(state)
    return new


class _Plan:
    """What a layer's calls reuse while its attributes stay as they are: the op's arguments after the tensors
    (None where the layer's attributes need the functional op's normalising and checks), and the backends
    autotune remembered for the layer, by ops._memo_key (what its calls can change: the input's shape, layout,
    dtype and device, the thread count, which inputs autograd differentiates)."""

    __slots__ = ("args", "choices")

    def __init__(self, args):
        self.args = args
        self.choices = _NO_CHOICES  # an autotune.memo() from the first choice on (autotune.clear empties it)


_NO_CHOICES = {}  # never written


class _DlkLayer:
    """Mixin with what the three layers share: the torch base class, from_torch/to_torch, the repr, and the
    per-layer plan that spares a call auto's key and the arguments' normalising."""

    _torch_class = None  # the torch.nn class this layer replaces
    # _fused_call: the functional activation call (op, target, args, kwargs) that convert() removed from a
    # torch.fx graph when it fused it into this layer; revert() puts it back.
    # _implementations: the backend auto ran, by "inference" / "training" (ConversionReport.implementations).
    # _plan: a _Plan, made by the first call after any attribute assignment (__setattr__ drops it).
    _own_attributes = ("activation", "activation_params", "backend", "_fused_by_convert", "_fused_call",
                       "_implementations", "_plan")
    _plan = None

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        # The plan is derived from the attributes (and a new weight may have another shape): made again.
        self.__dict__["_plan"] = None

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_plan", None)  # a copy makes its own (autotune.clear must reach its choices)
        return state

    def _op_args(self):
        """The op's arguments after the tensors, for the plan; None where the functional op must normalise."""
        return self._activation_args()

    def _new_plan(self):
        plan = _Plan(self._op_args())
        if not ops._is_compiling():  # a traced call leaves the module as it is
            self.__dict__["_plan"] = plan
        return plan

    def _remember(self, memo_key, training, chosen, final):
        """auto ran `chosen` for a call with this ops._memo_key (dlkernels.ops._auto), training when autograd
        records it: the conversion report's entry, and when the choice is final (autotune remembers it) the one
        the layer's next such calls run."""
        self.__dict__.setdefault("_implementations", {})["training" if training else "inference"] = chosen
        if final:
            plan = self._plan
            if plan is None:
                plan = self._new_plan()
            if plan.choices is _NO_CHOICES:
                plan.choices = autotune.memo()
            plan.choices[memo_key] = chosen

    def _remembered(self, plan, input, weight=None, bias=None):
        """The backend auto chose before for a call like this one, else None (then ops decides)."""
        if self.backend != "auto" or ops._is_compiling():
            return None
        return plan.choices.get(ops._memo_key(input, weight, bias))

    @classmethod
    def from_torch(cls, layer, activation="none", backend="auto", activation_params=None):
        """A dlkernels layer that shares ``layer``'s parameters and buffers (no copy: training one trains the
        other), with its hooks, training flag and other attributes.

        ``layer`` must be an instance of the torch.nn class this layer replaces (or of a subclass: then its
        own forward is not used, ours is). ``activation`` (with ``activation_params``) is applied after the
        layer, fused into its kernel.
        """
        if not isinstance(layer, cls._torch_class):
            raise TypeError(
                f"dlkernels.nn.{cls.__name__}.from_torch: expected a torch.nn.{cls._torch_class.__name__}, "
                f"got {type(layer).__name__}"
            )
        new = _rebuild(layer, cls, drop=cls._own_attributes)
        new._set_options(activation, backend, activation_params)
        return new

    def to_torch(self):
        """The plain torch.nn layer with the same (shared) parameters, buffers, hooks and attributes.

        A fused activation is not part of it: see ``activation_module()``, or use ``dlkernels.revert`` on the
        whole model, which puts the original activation modules back."""
        return _rebuild(self, self._torch_class, drop=self._own_attributes)

    def activation_module(self):
        """A new torch.nn module computing this layer's fused activation, or None when there is none."""
        return activation_module(self.activation, self.activation_params)

    def _set_options(self, activation, backend, activation_params=None):
        self.activation = _check_activation(activation)
        self.activation_params = _check_activation_params(activation, activation_params)
        self.backend = _check_backend(backend)
        self._fused_by_convert = False
        self._fused_call = None

    def _activation_args(self):
        """(activation, alpha, beta) as the ops take them."""
        return (self.activation,
                *ops._activation_args(self.activation, getattr(self, "activation_params", None), "nn"))

    def extra_repr(self):
        options = f"backend={self.backend!r}"
        if getattr(self, "activation_params", None):
            options = f"activation_params={self.activation_params!r}, " + options
        if getattr(self, "activation", None) is not None:
            options = f"activation={self.activation!r}, " + options
        base = super().extra_repr()
        return f"{base}, {options}" if base else options


_ABSENT = object()


def _weight_and_bias(layer):
    """layer.weight and layer.bias: read from its _parameters where both are there (as nn.Module's __getattr__
    would find them, at a fraction of its cost per call); through the attributes otherwise (a parametrization or
    weight_norm computes them)."""
    params = layer._parameters
    weight, bias = params.get("weight"), params.get("bias", _ABSENT)
    if weight is None or bias is _ABSENT:
        return layer.weight, layer.bias
    return weight, bias


def _int_pair(value):
    """A layer's int or pair of ints (torch.nn keeps tuples) as the ops' list; None for anything else."""
    if type(value) is tuple and len(value) == 2:
        return list(value)
    return [value, value] if type(value) is int else None


class Linear(_DlkLayer, nn.Linear):
    """torch.nn.Linear computing ``activation(x @ weight.T + bias)`` with ``dlkernels.ops.linear_act``.

    Same arguments as torch.nn.Linear plus ``activation`` (fused after the bias), ``activation_params`` and
    ``backend``."""

    _torch_class = nn.Linear

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, activation="none",
                 backend="auto", activation_params=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._set_options(activation, backend, activation_params)

    def forward(self, input):
        weight, bias = _weight_and_bias(self)
        plan = self._plan
        if plan is None:
            plan = self._new_plan()
        chosen = self._remembered(plan, input, weight, bias)
        if chosen is None:
            chosen = ops._linear_act_backend(self.backend, input, weight, bias, *plan.args, self)
        return ops._linear_act_run(chosen, input, weight, bias, *plan.args)


class Conv2d(_DlkLayer, nn.Conv2d):
    """torch.nn.Conv2d computing ``activation(conv2d(x) + bias)`` with ``dlkernels.ops.conv2d``.

    Same arguments as torch.nn.Conv2d plus ``activation``, ``activation_params`` and ``backend``. ``padding_mode``
    other than "zeros" ("reflect", "replicate", "circular") works the way torch does it: the input is padded with
    F.pad first, then convolved without padding."""

    _torch_class = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, activation="none", backend="auto",
                 activation_params=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._set_options(activation, backend, activation_params)

    def _op_args(self):
        """(stride, padding, dilation, groups, activation, alpha, beta) as the ops take them (padding 0 after the
        padding mode's own F.pad); None for a "same" / "valid" padding, which the functional op works out."""
        pairs = (_int_pair(self.stride), _int_pair(self.padding if self.padding_mode == "zeros" else 0),
                 _int_pair(self.dilation))
        return None if None in pairs else (*pairs, self.groups, *self._activation_args())

    # The op, auto's choice and the run with a backend, for the planned call (_planned).
    _planned_op = ("conv2d", ops._conv2d_auto, ops._conv2d_run)

    def _planned(self, input, weight, bias):
        """The op's output with the plan's arguments (input already padded by the padding mode), or None where
        the functional op must normalise them or the input is not 4-D."""
        plan = self._plan
        if plan is None:
            plan = self._new_plan()
        args = plan.args
        if args is None:
            return None
        op, auto, run = self._planned_op
        chosen = self._remembered(plan, input, weight, bias)
        if chosen is None:
            if input.dim() != 4:
                return None
            chosen = ops._backend_for(op, self.backend, input)
            if self.backend == "auto":
                chosen = auto(chosen, input, weight, bias, *args, self)
        return run(chosen, input, weight, bias, *args)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        out = self._planned(input, weight, bias)
        if out is not None:
            return out
        return ops.conv2d(input, weight, bias, self.stride, 0 if self.padding_mode != "zeros" else self.padding,
                          self.dilation, self.groups, self.activation, self.backend,
                          activation_params=getattr(self, "activation_params", None))

    def forward(self, input):
        return self._conv_forward(input, *_weight_and_bias(self))


class MaxPool2d(_DlkLayer, nn.MaxPool2d):
    """torch.nn.MaxPool2d computed with ``dlkernels.ops.max_pool2d``; same arguments plus ``backend``.

    It has no ``activation`` (max pooling commutes with the monotonic activations anyway)."""

    _torch_class = nn.MaxPool2d
    _own_attributes = ("backend", "_fused_by_convert", "_fused_call", "_implementations", "_plan")

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False,
                 *, backend="auto"):
        super().__init__(kernel_size, stride=stride, padding=padding, dilation=dilation,
                         return_indices=return_indices, ceil_mode=ceil_mode)
        self._set_options(None, backend)

    @classmethod
    def from_torch(cls, layer, backend="auto"):
        """A dlkernels MaxPool2d with ``layer``'s settings, hooks and attributes."""
        return super().from_torch(layer, activation=None, backend=backend)

    def _set_options(self, activation, backend, activation_params=None):
        if activation is not None or activation_params is not None:
            raise TypeError("dlkernels.nn.MaxPool2d has no activation")
        self.backend = _check_backend(backend)
        self._fused_by_convert = False
        self._fused_call = None

    def activation_module(self):
        return None

    def _op_args(self):
        return None  # the functional op takes the attributes as they are

    def forward(self, input):
        plan = self._plan
        if plan is None:
            plan = self._new_plan()
        return ops._max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                               self.return_indices, self._remembered(plan, input) or self.backend, self)


class Conv2dMaxPool(Conv2d):
    """The fused Conv -> activation -> MaxPool block: ``max_pool2d(activation(conv2d(x) + bias))`` with
    ``dlkernels.ops.conv2d_maxpool``, which pools the conv output while it is in cache and keeps only the pooled
    output and a small window index for the backward.

    A torch.nn.Conv2d (and a dlkernels.nn.Conv2d): the same constructor, parameters and ``state_dict`` keys,
    plus ``activation`` (default "relu"), ``activation_params``, ``backend`` and the pooling's
    ``pool_kernel_size``, ``pool_stride`` (None: the kernel size), ``pool_padding`` and ``pool_ceil_mode``
    (torch.nn.MaxPool2d's arguments; dilation 1, no indices). ``dlkernels.convert`` makes these from
    Conv2d -> activation -> MaxPool2d; ``pool_module()`` gives the torch MaxPool2d back.

        block = dlkernels.nn.Conv2dMaxPool(3, 16, 3, padding=1, activation="relu", pool_kernel_size=2)
        fast = dlkernels.nn.Conv2dMaxPool.from_torch(conv, nn.MaxPool2d(2), activation="relu")
    """

    _own_attributes = _DlkLayer._own_attributes + ("pool_kernel_size", "pool_stride", "pool_padding",
                                                   "pool_ceil_mode", "_pool_fused_by_convert")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, activation="relu", backend="auto",
                 activation_params=None, pool_kernel_size=2, pool_stride=None, pool_padding=0, pool_ceil_mode=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype,
                         activation=activation, backend=backend, activation_params=activation_params)
        self._set_pool(pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode)

    @classmethod
    def from_torch(cls, layer, pool=None, activation="relu", backend="auto", activation_params=None):
        """A block sharing the parameters of ``layer`` (a torch.nn.Conv2d, or a dlkernels one) with the pooling
        of ``pool`` (a torch.nn.MaxPool2d with dilation 1 and no indices; None: 2x2, stride 2)."""
        if isinstance(layer, Conv2d):  # ours: start from its torch form (its own attributes are replaced)
            layer = layer.to_torch()
        new = super().from_torch(layer, activation=activation, backend=backend, activation_params=activation_params)
        if pool is None:
            new._set_pool(2, None, 0, False)
            return new
        reason = pool_unsupported(pool)
        if reason:
            raise ValueError(f"dlkernels.nn.Conv2dMaxPool.from_torch: cannot fuse {pool!r}: {reason}")
        new._set_pool(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
        return new

    def _set_pool(self, kernel_size, stride, padding, ceil_mode):
        self.pool_kernel_size = kernel_size
        self.pool_stride = kernel_size if stride is None or stride == [] or stride == () else stride
        self.pool_padding = padding
        self.pool_ceil_mode = bool(ceil_mode)
        self._pool_fused_by_convert = False

    def pool_module(self):
        """A new torch.nn.MaxPool2d doing this block's pooling."""
        return nn.MaxPool2d(self.pool_kernel_size, self.pool_stride, self.pool_padding,
                            ceil_mode=self.pool_ceil_mode)

    def _op_args(self):
        """Conv2d's arguments, then the pooling's (pool_kernel_size, pool_stride, pool_padding, pool_ceil_mode) as
        the op takes them; None where the functional op must normalise."""
        conv = super()._op_args()
        pool = (_int_pair(self.pool_kernel_size), _int_pair(self.pool_stride), _int_pair(self.pool_padding))
        return None if conv is None or None in pool else (*conv, *pool, bool(self.pool_ceil_mode))

    _planned_op = ("conv2d_maxpool", ops._conv2d_maxpool_auto, ops._conv2d_maxpool_run)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        out = self._planned(input, weight, bias)
        if out is not None:
            return out
        return ops.conv2d_maxpool(input, weight, bias, self.stride, 0 if self.padding_mode != "zeros" else self.padding,
                                  self.dilation, self.groups, self.activation, self.pool_kernel_size,
                                  self.pool_stride, self.pool_padding, self.pool_ceil_mode, self.backend,
                                  activation_params=getattr(self, "activation_params", None))

    def extra_repr(self):
        pool = f"pool_kernel_size={self.pool_kernel_size!r}, pool_stride={self.pool_stride!r}"
        if self.pool_padding not in (0, (0, 0)):
            pool += f", pool_padding={self.pool_padding!r}"
        if self.pool_ceil_mode:
            pool += ", pool_ceil_mode=True"
        return f"{super().extra_repr()}, {pool}"


def pool_unsupported(pool):
    """Why a torch.nn.MaxPool2d cannot be the pooling of a Conv2dMaxPool block (None when it can)."""
    if type(pool) not in (nn.MaxPool2d, MaxPool2d):
        return f"it is a {type(pool).__name__}, not an nn.MaxPool2d"
    if _int_pair(pool.dilation) != [1, 1]:
        return f"its dilation is {pool.dilation!r} (the block pools with dilation 1)"
    if pool.return_indices:
        return "it returns indices"
    return None


class _Placeholder(nn.Module):
    """A parameter-free module that returns its input: it keeps the place (and so the module names) of a
    module whose work another layer now does. ``original`` is that module (kept outside the module tree);
    ``into`` names the layer that does its work."""

    def __init__(self, original, into):
        super().__init__()
        object.__setattr__(self, "original", original)  # not a submodule: it must not show in modules()
        self.into = into

    def forward(self, input):
        return input

    def extra_repr(self):
        return f"{self.original!r}, into={self.into!r}"


class FusedActivation(_Placeholder):
    """What ``dlkernels.convert`` leaves where an activation module was fused into the layer before it.

    It returns its input unchanged (the layer already applied the activation) and holds no parameters, so the
    model's ``state_dict`` keys do not change. ``original`` is the activation module it stands for (kept
    outside the module tree); ``into`` names the layer that computes it. ``dlkernels.revert`` puts
    ``original`` back."""


class FusedMaxPool(_Placeholder):
    """What ``dlkernels.convert`` leaves where a MaxPool2d was fused, with the activation before it, into the
    Conv2d before that: the Conv2d became a :class:`Conv2dMaxPool` block.

    It returns its input unchanged (the block already pooled) and holds nothing, so module names and
    ``state_dict`` keys do not change. ``original`` is the torch.nn.MaxPool2d it stands for (kept outside the
    module tree); ``into`` names the block. ``dlkernels.revert`` puts ``original`` back."""


class FoldedBatchNorm(_Placeholder):
    """What ``dlkernels.fold_batchnorm`` (or ``convert(..., fold_batchnorm=True)``) leaves where an inference-mode
    BatchNorm was folded into the Conv2d / Linear before it (its scale and shift now live in that layer's weight
    and bias).

    It returns its input unchanged and holds no parameters or buffers, so module names stay as they were (the
    BatchNorm's own state_dict entries are gone: they are in the layer now). ``original`` is the BatchNorm it
    stands for (kept outside the module tree, for inspection); ``into`` names the layer that computes it.
    ``dlkernels.revert`` keeps this placeholder: the folded layer followed by it computes what layer + BatchNorm
    computed in eval mode."""
