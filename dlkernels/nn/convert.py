"""convert(): swap torch.nn layers of a model for dlkernels layers and fuse activations; revert(): undo it.

    model = dlkernels.convert(torchvision.models.vgg11())                 # a converted copy
    model, report = dlkernels.convert(model, return_report=True)          # ... and what was done
    print(report)
    plain = dlkernels.revert(model)                                      # torch.nn layers again
"""
import copy
import warnings
from collections import defaultdict
from typing import List, NamedTuple

import torch
import torch.fx
from torch import nn

from .. import ops
from ..ops import BACKENDS
from .layers import Conv2d, FusedActivation, Linear, MaxPool2d, activation_name

__all__ = ["convert", "revert", "ConversionReport", "Converted", "Fused", "Left"]

# torch.nn class -> dlkernels.nn class. Exact classes only: a subclass may have its own forward.
_REPLACEMENTS = {nn.Linear: Linear, nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d}
_OURS = (Linear, Conv2d, MaxPool2d)
_OP_OF = {nn.Linear: "linear_act", nn.Conv2d: "conv2d", nn.MaxPool2d: "max_pool2d"}


# ---------------------------------------------------------------------------------------------------------
# The report


class Converted(NamedTuple):
    """A layer replaced by its dlkernels layer: ``name`` (as in named_modules()), ``torch_type`` (e.g.
    "Conv2d"), ``activation`` fused into it ("none" when none)."""
    name: str
    torch_type: str
    activation: str


class Fused(NamedTuple):
    """An activation module ``name`` (e.g. "features.1", a ReLU) folded into the layer ``into`` (e.g.
    "features.0") as ``activation`` ("relu"); a FusedActivation placeholder now stands at ``name``."""
    name: str
    into: str
    activation: str


class Left(NamedTuple):
    """A layer left as it was: ``name``, ``type`` (its class name) and ``reason`` (a sentence)."""
    name: str
    type: str
    reason: str


class ConversionReport:
    """What ``dlkernels.convert`` did to a model.

    Attributes (lists in module order; names as in ``model.named_modules()``):

    - ``backend``: the backend the converted layers use.
    - ``converted``: list of :class:`Converted` ``(name, torch_type, activation)``, one per replaced layer.
    - ``fused``: list of :class:`Fused` ``(name, into, activation)``, one per activation folded into a layer.
    - ``left``: list of :class:`Left` ``(name, type, reason)``: Linear / Conv2d / MaxPool2d layers (or their
      subclasses) that were not converted, and activations after a converted layer that could not be fused
      (when ``fuse=True``), each with the reason.
    - ``notes``: list of str: other things worth knowing (e.g. a submodule torch.fx could not trace, so only
      the nn.Sequential containers inside it were searched for activations to fuse).

    ``str(report)`` is a readable table; ``report.summary()`` one line; ``report.to_dict()`` plain data
    (JSON-serialisable); ``bool(report.left)`` tells whether anything was left.
    """

    def __init__(self, backend):
        self.backend = backend
        self.converted: List[Converted] = []
        self.fused: List[Fused] = []
        self.left: List[Left] = []
        self.notes: List[str] = []

    def summary(self):
        return (f"dlkernels.convert(backend={self.backend!r}): {len(self.converted)} layers converted, "
                f"{len(self.fused)} activations fused, {len(self.left)} left as they were")

    def to_dict(self):
        return {
            "backend": self.backend,
            "converted": [c._asdict() for c in self.converted],
            "fused": [f._asdict() for f in self.fused],
            "left": [entry._asdict() for entry in self.left],
            "notes": list(self.notes),
        }

    def __str__(self):
        lines = [self.summary()]
        fused_into = {f.into: f.name for f in self.fused}
        for c in self.converted:
            detail = f"{c.torch_type} -> dlkernels.nn.{c.torch_type}"
            if c.activation != "none":
                detail += f" + {c.activation} (fused from {fused_into.get(c.name, '?')})"
            lines.append(f"  converted  {c.name or '<model>'}: {detail}")
        for entry in self.left:
            lines.append(f"  left       {entry.name or '<model>'} ({entry.type}): {entry.reason}")
        for note in self.notes:
            lines.append(f"  note       {note}")
        return "\n".join(lines)

    def __repr__(self):
        return f"<ConversionReport: {self.summary()}>"


# ---------------------------------------------------------------------------------------------------------
# Walking the module tree by slot (parent, key): a module held in two places has two slots


def _join(prefix, key):
    return f"{prefix}.{key}" if prefix else key


def _slots(model):
    """{id(module): [qualified name, ...]} over every place a module is held (shared modules repeat)."""
    found = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        found[id(module)].append(name)
    return found


def _has_hooks(module):
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _model_device(model):
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _cannot_run(module, backend, default_device):
    """Why the dlkernels layer could not run this (exact-class) torch layer, or None when it can."""
    weight = getattr(module, "weight", None)
    if weight is not None and not weight.is_floating_point():
        return f"its weight is {weight.dtype}; dlkernels computes floating point types only"
    if backend in ("native", "triton"):
        device = weight.device if weight is not None else default_device
        try:
            ops.select_backend(_OP_OF[type(module)], backend, device)
        except Exception as error:  # noqa: BLE001 (RuntimeError normally; any failure means it cannot run)
            return f"backend {backend!r} cannot run it: {type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Finding activations to fuse


class _Tracer(torch.fx.Tracer):
    """The default tracer, with dlkernels layers (and placeholders) as leaves like the torch.nn layers."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (*_OURS, FusedActivation)) or super().is_leaf_module(m, qualname)


def _is_plain_sequential(module):
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _plan_fusions(model, convertible, report):
    """Pairs (layer name, activation name, activation) where the activation module directly follows a
    convertible Linear/Conv2d: adjacent in an nn.Sequential, or the activation's only input is the layer's
    output and its only use in a torch.fx trace. Both modules must be held in one place in the model and
    be called once, with no hooks (a hook would see the fused output)."""
    slots = _slots(model)
    pairs = []

    def fusable(layer, act, layer_name, act_name):
        if id(layer) not in convertible or type(layer) not in (nn.Linear, nn.Conv2d):
            return False
        activation = activation_name(act)
        if activation is None:
            if isinstance(act, (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU)):
                report.left.append(Left(act_name, type(act).__name__,
                                        f"not fused into {layer_name}: a subclass of a torch activation"))
            return False
        why = None
        if len(slots[id(layer)]) != 1 or len(slots[id(act)]) != 1:
            why = "the layer or the activation module is held in more than one place in the model"
        elif _has_hooks(layer) or _has_hooks(act):
            why = "the layer or the activation has hooks, which would see the fused output"
        if why:
            report.left.append(Left(act_name, type(act).__name__, f"not fused into {layer_name}: {why}"))
            return False
        pairs.append((layer_name, act_name, activation))
        return True

    def visit(module, prefix):
        if isinstance(module, (*_REPLACEMENTS, *_OURS, FusedActivation)) or not module._modules:
            return
        if _is_plain_sequential(module):
            items = [(k, m) for k, m in module._modules.items() if m is not None]
            for (k1, m1), (k2, m2) in zip(items, items[1:]):
                fusable(m1, m2, _join(prefix, k1), _join(prefix, k2))
            for key, child in items:
                visit(child, _join(prefix, key))
            return
        try:
            graph = _Tracer().trace(module)
        except Exception as error:  # noqa: BLE001 (any failure just means: search the children instead)
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            report.notes.append(
                f"torch.fx could not trace {prefix or '<model>'} ({type(module).__name__}: {type(error).__name__}"
                f"{': ' + message[:120] if message else ''}); searched its nn.Sequential children only"
            )
            for key, child in module._modules.items():
                if child is not None:
                    visit(child, _join(prefix, key))
            return
        _fusions_from_graph(module, prefix, graph, fusable)

    visit(model, "")
    return pairs


def _fusions_from_graph(module, prefix, graph, fusable):
    calls = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    for target, nodes in calls.items():
        layer = module.get_submodule(target)
        if type(layer) not in (nn.Linear, nn.Conv2d) or len(nodes) != 1 or len(nodes[0].users) != 1:
            continue
        user = next(iter(nodes[0].users))
        if user.op != "call_module" or user.args != (nodes[0],) or user.kwargs or len(calls[user.target]) != 1:
            continue
        fusable(layer, module.get_submodule(user.target), _join(prefix, target), _join(prefix, user.target))


# ---------------------------------------------------------------------------------------------------------
# convert / revert


def _replace_slots(model, replace):
    """Calls replace(name, module) for every module held in the tree (a shared module once, then the same
    result in all its places) and puts the returned module in its place; descends into what it returns."""
    done = {}

    def visit(parent, prefix):
        for key, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) in done:
                parent._modules[key] = done[id(child)]
                continue
            name = _join(prefix, key)
            new = replace(name, child)
            done[id(child)] = new
            parent._modules[key] = new
            visit(new, name)

    visit(model, "")


def convert(model, backend="auto", fuse=True, inplace=False, *, return_report=False):
    """Replaces every torch.nn.Linear, Conv2d and MaxPool2d of ``model`` by the dlkernels.nn layer that
    computes it with ``backend``, and with ``fuse=True`` folds an activation module that directly follows a
    Linear or Conv2d into it.

    Args:
        model: an nn.Module (a single layer works too: it is returned converted).
        backend: "auto" (default), "native", "triton" or "reference", given to every converted layer.
        fuse: fold nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU (both forms) and nn.SiLU modules into the Linear /
            Conv2d before them when that layer's output goes nowhere else: next to each other in an
            nn.Sequential (one that keeps Sequential's forward), or found by a torch.fx trace of a module.
            The activation's place is taken by a :class:`dlkernels.nn.FusedActivation` placeholder (an
            identity without parameters), so ``state_dict`` keys do not change and checkpoints load both ways.
            Functional activations (``F.relu(self.fc(x))``) are not fused; the layer is still converted.
        inplace: change ``model`` itself; by default a deep copy is converted and ``model`` is left as is.
        return_report: also return a :class:`ConversionReport`.

    Returns:
        the converted model, or ``(model, report)`` with ``return_report=True``.

    Converted layers share nothing with the input model unless ``inplace=True`` (then they share its
    parameters). Only the exact classes are converted: subclasses of nn.Linear / Conv2d / MaxPool2d (which may
    have their own forward) and layers the backend cannot run are left as they are, listed in
    ``report.left``, and a warning names them. ``padding_mode`` "reflect" / "replicate" / "circular" convs
    are converted (padded first, as torch does). Already converted dlkernels layers are kept as they are.

    Fusion through torch.fx follows the trace of the model's current mode: a forward that takes a different
    path in another mode (``if self.training:``) is only checked along the traced one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"dlkernels.convert: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"dlkernels.convert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport(backend)
    device = _model_device(model)

    # 1. Which layers can be converted.
    convertible = set()
    for name, module in model.named_modules():
        if type(module) in _REPLACEMENTS:
            reason = _cannot_run(module, backend, device)
            if reason is None:
                convertible.add(id(module))
            else:
                report.left.append(Left(name, type(module).__name__, reason))
        elif isinstance(module, tuple(_REPLACEMENTS)) and not isinstance(module, _OURS):
            base = next(b for b in _REPLACEMENTS if isinstance(module, b))
            report.left.append(Left(name, type(module).__name__,
                                    f"a subclass of nn.{base.__name__}, which may have its own forward"))

    # 2. Which activations fold into them.
    fusions = _plan_fusions(model, convertible, report) if fuse else []
    fused_activation = {layer: activation for layer, _, activation in fusions}
    placeholders = {act: (layer, activation) for layer, act, activation in fusions}

    # 3. Swap: layers (sharing the parameters of the deep copy) and placeholders for fused activations.
    if id(model) in convertible:  # the model is a single layer
        report.converted.append(Converted("", type(model).__name__, "none"))
        model = _REPLACEMENTS[type(model)].from_torch(model, backend=backend)
    else:
        def replace(name, module):
            if id(module) in convertible:
                cls = _REPLACEMENTS[type(module)]
                if cls is MaxPool2d:
                    new = cls.from_torch(module, backend=backend)
                else:
                    new = cls.from_torch(module, activation=fused_activation.get(name, "none"), backend=backend)
                    new._fused_by_convert = name in fused_activation
                report.converted.append(Converted(name, type(module).__name__, fused_activation.get(name, "none")))
                return new
            if name in placeholders:
                layer, activation = placeholders[name]
                report.fused.append(Fused(name, layer, activation))
                return FusedActivation(module, into=layer)
            return module

        _replace_slots(model, replace)

    if report.left:
        shown = ", ".join(f"{e.name or '<model>'} ({e.type})" for e in report.left[:5])
        more = f" and {len(report.left) - 5} more" if len(report.left) > 5 else ""
        warnings.warn(
            f"dlkernels.convert left {len(report.left)} module(s) as they were: {shown}{more}; "
            "pass return_report=True to see why",
            UserWarning,
            stacklevel=2,
        )
    return (model, report) if return_report else model


def revert(model, inplace=False):
    """Gives back the model with plain torch.nn layers: each dlkernels.nn Linear / Conv2d / MaxPool2d becomes
    the torch.nn layer with the same parameters, and each FusedActivation placeholder becomes the original
    activation module again, so the model computes what it did before ``convert`` and has the same
    ``state_dict`` keys.

    By default a deep copy is reverted; with ``inplace=True``, ``model`` itself (the torch layers then share
    the dlkernels layers' parameters). A dlkernels layer with an activation that ``convert`` did not fuse
    (one built by hand, say ``dlkernels.nn.Linear(4, 8, activation="relu")``) becomes
    ``nn.Sequential(torch layer, activation)``: its state_dict keys gain a "0." and a warning says so.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dlkernels.revert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)

    def replace(name, module):
        if isinstance(module, FusedActivation):
            return module.original
        if isinstance(module, _OURS):
            plain = module.to_torch()
            act = module.activation_module()
            if act is None or module._fused_by_convert:
                return plain
            warnings.warn(
                f"dlkernels.revert: {name or '<model>'} has activation {module.activation!r} that convert() did "
                f"not fuse; it becomes nn.Sequential({type(plain).__name__}, {type(act).__name__}) and its "
                "state_dict keys gain the prefix '0.'",
                UserWarning,
                stacklevel=3,
            )
            return nn.Sequential(plain, act)
        return module

    if isinstance(model, (FusedActivation, *_OURS)):
        return replace("", model)
    _replace_slots(model, replace)
    return model
