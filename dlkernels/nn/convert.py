"""convert(): swap torch.nn layers of a model for dlkernels layers and fuse activations; revert(): undo it.

    model = dlkernels.convert(torchvision.models.vgg11())                 # a converted copy (Conv2d -> ReLU ->
                                                                          # MaxPool2d become fused blocks)
    model, report = dlkernels.convert(model, return_report=True)          # ... and what was done
    print(report)
    plain = dlkernels.revert(model)                                      # torch.nn layers again
    frozen = dlkernels.convert(model.eval(), fold_batchnorm=True)         # for inference: BatchNorm folded

Where an activation is a function call (``F.relu(self.conv(x))``, ``x.sigmoid()``) rather than a module, the
module whose forward makes that call becomes a ``torch.fx.GraphModule`` without the call (same submodules,
parameter names and state_dict keys); see ``_ACTIVATION_CALLS`` for the calls that fuse.
"""
import copy
import warnings
import weakref
from collections import defaultdict
from typing import List, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .. import contract, ops
from ..ops import BACKENDS
from .layers import (Conv2d, Conv2dMaxPool, FoldedBatchNorm, FusedActivation, FusedMaxPool, Linear, MaxPool2d,
                     _rebuild, activation_name, activation_params, pool_unsupported)

__all__ = ["convert", "revert", "fold_batchnorm", "ConversionReport", "Converted", "Fused", "Pooled", "Folded", "Left"]

# torch.nn class -> dlkernels.nn class. Exact classes only: a subclass may have its own forward.
_REPLACEMENTS = {nn.Linear: Linear, nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d}
_OURS = (Linear, Conv2d, MaxPool2d)
_OP_OF = {nn.Linear: "linear_act", nn.Conv2d: "conv2d", nn.MaxPool2d: "max_pool2d"}
_PLACEHOLDERS = (FusedActivation, FoldedBatchNorm, FusedMaxPool)
# The BatchNorm that folds into each layer type (exact classes).
_BATCHNORM_AFTER = {
    nn.Conv2d: nn.BatchNorm2d,
    Conv2d: nn.BatchNorm2d,
    nn.Linear: nn.BatchNorm1d,
    Linear: nn.BatchNorm1d,
}


# ---------------------------------------------------------------------------------------------------------
# Functional activations: the one table of calls that fuse like activation modules


def _argument(node, index, name, default):
    """Argument ``name`` of an fx call node (at position ``index`` when given positionally; the input is 0)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


# Rows: (functions, method names, rule). rule(node) gives the dlkernels activation name these call arguments
# compute, or None when they have no fused form. A row fuses only while its name is in dlkernels.ACTIVATIONS
# (looked up at conversion time), so rows for activations the kernels do not have yet are harmless. A rule of
# an activation with parameters returns (name, activation_params) with torch's names for them.
_ACTIVATION_CALLS = [
    (("relu", "relu_"), ("relu", "relu_"), lambda n: "relu"),
    (("sigmoid", "sigmoid_"), ("sigmoid", "sigmoid_"), lambda n: "sigmoid"),
    (("tanh", "tanh_"), ("tanh", "tanh_"), lambda n: "tanh"),
    (("silu",), (), lambda n: "silu"),
    (("gelu",), (), lambda n: {"none": "gelu", "tanh": "gelu_tanh"}.get(_argument(n, 1, "approximate", "none"))),
    (("relu6",), (), lambda n: "relu6"),
    (
        ("hardtanh", "hardtanh_"),
        (),
        lambda n: ("hardtanh", {"min_val": _argument(n, 1, "min_val", -1.0),
                                "max_val": _argument(n, 2, "max_val", 1.0)}),
    ),
    (("hardswish",), (), lambda n: "hardswish"),
    (("hardsigmoid",), (), lambda n: "hardsigmoid"),
    (
        ("leaky_relu", "leaky_relu_"),
        (),
        lambda n: ("leaky_relu", {"negative_slope": _argument(n, 1, "negative_slope", 0.01)}),
    ),
    (("elu", "elu_"), (), lambda n: ("elu", {"alpha": _argument(n, 1, "alpha", 1.0)})),
    (("mish",), (), lambda n: "mish"),
]


def _call_table():
    """{(fx op, target): rule}: each function name of a row looked up in torch.nn.functional and torch (the
    functional, the torch.* and the in-place forms), each method name as a Tensor method."""
    table = {}
    for functions, methods, rule in _ACTIVATION_CALLS:
        for name in functions:
            for namespace in (F, torch):
                fn = getattr(namespace, name, None)
                if fn is not None:
                    table[("call_function", fn)] = rule
        for name in methods:
            table[("call_method", name)] = rule
    return table


_CALLS = _call_table()


def _call_activation(node, source):
    """The dlkernels activation an fx node computes on ``source`` (its only tensor argument) as (name,
    activation_params or None), or None when it computes none the kernels have (with these parameters)."""
    rule = _CALLS.get((node.op, node.target))
    if rule is None or not node.args or node.args[0] is not source:
        return None
    if _has_node((node.args[1:], node.kwargs)):  # a tensor-valued parameter: not an activation we know
        return None
    try:
        name, params = _with_params(rule(node))
        if name not in contract.ACTIVATIONS:
            return None
        contract.activation_args(name, params)  # parameters the kernels do not support raise
    except Exception:  # noqa: BLE001 (unusual arguments: just not fused)
        return None
    return name, params


def _with_params(activation):
    """(name, activation_params or None) from a rule's or a module's activation: a name or such a pair."""
    if activation is None or isinstance(activation, str):
        return activation, None
    return activation


def _has_node(values):
    found = []
    torch.fx.node.map_arg(values, found.append)
    return bool(found)


def _describe_call(node):
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    module = getattr(node.target, "__module__", None) or "torch"
    module = {"torch.nn.functional": "F", "torch._C._nn": "F", "torch._C._VariableFunctions": "torch"}.get(
        module, module
    )
    return f"{module}.{getattr(node.target, '__name__', node.target)}"


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
    "features.0") as ``activation`` ("relu"); a FusedActivation placeholder now stands at ``name``.

    For a functional activation (``F.relu(self.conv(x))``, ``x.sigmoid()``), ``name`` is
    "<module>:<fx node>", e.g. "layer1.0:relu" ("<model>:relu" for the model itself): the call ``relu`` in
    the torch.fx graph of that module, which is now a GraphModule without the call."""
    name: str
    into: str
    activation: str


class Pooled(NamedTuple):
    """A MaxPool2d ``name`` (e.g. "features.2") fused, with the activation before it, into the Conv2d ``into``
    ("features.0"), which became a :class:`dlkernels.nn.Conv2dMaxPool` block; a FusedMaxPool placeholder now
    stands at ``name``."""
    name: str
    into: str


class Folded(NamedTuple):
    """A BatchNorm ``name`` (e.g. "bn1") folded into the Conv2d / Linear ``into`` ("conv1") by
    ``fold_batchnorm``; a FoldedBatchNorm placeholder now stands at ``name``."""
    name: str
    into: str


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
    - ``pooled``: list of :class:`Pooled` ``(name, into)``, one per MaxPool2d fused into the Conv2d before it
      (a Conv2d -> activation -> MaxPool2d block, now one :class:`dlkernels.nn.Conv2dMaxPool`); such a
      MaxPool2d is not in ``converted``.
    - ``folded``: list of :class:`Folded` ``(name, into)``, one per BatchNorm folded into a layer
      (``fold_batchnorm=True`` / ``dlkernels.fold_batchnorm``).
    - ``left``: list of :class:`Left` ``(name, type, reason)``: Linear / Conv2d / MaxPool2d layers (or their
      subclasses) that were not converted, and activations after a converted layer that could not be fused
      (when ``fuse=True``), each with the reason.
    - ``notes``: list of str: other things worth knowing (e.g. a submodule torch.fx could not trace, so only
      the nn.Sequential containers inside it were searched for activations to fuse).

    ``str(report)`` is a readable table; ``report.summary()`` one line; ``report.to_dict()`` plain data
    (JSON-serialisable); ``bool(report.left)`` tells whether anything was left. ``report.implementations()``
    says which implementation each converted layer ran with ``backend="auto"`` (chosen per input shape when
    the layer first sees it, so known once the model has run).
    """

    def __init__(self, backend):
        self.backend = backend
        self.converted: List[Converted] = []
        self.fused: List[Fused] = []
        self.pooled: List[Pooled] = []
        self.folded: List[Folded] = []
        self.left: List[Left] = []
        self.notes: List[str] = []
        self._model = None  # a weak reference to the converted model (implementations())

    def implementations(self):
        """{layer name: {"inference": backend, "training": backend}}: what each converted layer of the model
        ran so far, for the calls without and with autograd recording ("native", "triton" or "reference", or for
        training "native+reference": the native forward with PyTorch's backward, dlkernels.mixed; with
        backend="auto" the choice dlkernels.autotune made for the layer's input shapes; when the layer saw
        several, the choice for the latest one it had not run before, since a layer reuses its choices for
        inputs it has seen, without asking again). Layers that have not run, or that run an explicit backend,
        are absent."""
        model = self._model() if self._model is not None else None
        if model is None:
            return {}
        return {name: dict(module.__dict__["_implementations"]) for name, module in model.named_modules()
                if module.__dict__.get("_implementations")}

    def summary(self):
        if self.backend is None:  # fold_batchnorm alone
            return f"dlkernels.fold_batchnorm: {len(self.folded)} BatchNorms folded, {len(self.left)} left as they were"
        folded = f", {len(self.folded)} BatchNorms folded" if self.folded else ""
        pooled = f", {len(self.pooled)} max-pools fused into conv blocks" if self.pooled else ""
        return (f"dlkernels.convert(backend={self.backend!r}): {len(self.converted)} layers converted, "
                f"{len(self.fused)} activations fused{pooled}{folded}, {len(self.left)} left as they were")

    def to_dict(self):
        return {
            "backend": self.backend,
            "converted": [c._asdict() for c in self.converted],
            "fused": [f._asdict() for f in self.fused],
            "pooled": [p._asdict() for p in self.pooled],
            "folded": [f._asdict() for f in self.folded],
            "left": [entry._asdict() for entry in self.left],
            "notes": list(self.notes),
            "implementations": self.implementations(),
        }

    def __str__(self):
        lines = [self.summary()]
        fused_into = {f.into: f.name for f in self.fused}
        pooled_into = {p.into: p.name for p in self.pooled}
        for c in self.converted:
            block = c.name in pooled_into
            detail = f"{c.torch_type} -> dlkernels.nn.{'Conv2dMaxPool' if block else c.torch_type}"
            if c.activation != "none":
                detail += f" + {c.activation} (fused from {fused_into.get(c.name, '?')})"
            if block:
                detail += f" + MaxPool2d (fused from {pooled_into[c.name]})"
            lines.append(f"  converted  {c.name or '<model>'}: {detail}")
        for f in self.folded:
            lines.append(f"  folded     {f.name} into {f.into}")
        for entry in self.left:
            lines.append(f"  left       {entry.name or '<model>'} ({entry.type}): {entry.reason}")
        for note in self.notes:
            lines.append(f"  note       {note}")
        for name, chosen in self.implementations().items():
            runs = ", ".join(f"{mode} {backend}" for mode, backend in sorted(chosen.items()))
            lines.append(f"  runs       {name or '<model>'}: {runs}")
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
    if backend in ("native", "triton", "cuda_emu"):
        device = weight.device if weight is not None else default_device
        try:
            ops.select_backend(_OP_OF[type(module)], backend, device)
        except Exception as error:  # noqa: BLE001 (RuntimeError normally; any failure means it cannot run)
            return f"backend {backend!r} cannot run it: {type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Finding activations to fuse


class _Tracer(torch.fx.Tracer):
    """The default tracer, with dlkernels layers (and placeholders) as leaves like the torch.nn layers, and
    the modules in ``leaves`` (ids: GraphModules this conversion made) too."""

    def __init__(self, leaves=()):
        super().__init__()
        self._leaves = set(leaves)

    def is_leaf_module(self, m, qualname):
        return (isinstance(m, (*_OURS, *_PLACEHOLDERS)) or id(m) in self._leaves
                or super().is_leaf_module(m, qualname))


def _is_plain_sequential(module):
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _walk(model, report, on_sequential, on_graph, note=True):
    """Calls on_sequential(prefix, items) for each plain nn.Sequential (items: [(name, module)]) and
    on_graph(module, prefix, graph) for the outermost modules torch.fx can trace; searches the children of
    those it cannot (with a note in the report when ``note``)."""

    def visit(module, prefix):
        if isinstance(module, (*_REPLACEMENTS, *_OURS, *_PLACEHOLDERS)) or not module._modules:
            return
        if _is_plain_sequential(module):
            items = [(_join(prefix, k), m) for k, m in module._modules.items() if m is not None]
            on_sequential(items)
            for name, child in items:
                visit(child, name)
            return
        try:
            graph = _Tracer().trace(module)
        except Exception as error:  # noqa: BLE001 (any failure just means: search the children instead)
            if note:
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                report.notes.append(
                    f"torch.fx could not trace {prefix or '<model>'} ({type(module).__name__}: "
                    f"{type(error).__name__}{': ' + message[:120] if message else ''}); searched its nn.Sequential "
                    "children only"
                )
            for key, child in module._modules.items():
                if child is not None:
                    visit(child, _join(prefix, key))
            return
        on_graph(module, prefix, graph)

    visit(model, "")


def _sole_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _past_placeholders(module, node):
    """(user, last): the node that consumes ``node``'s value past any FoldedBatchNorm placeholders (each its
    input's only user, called with it alone), and the node it consumes; user is None when there is no
    single such user."""
    last, user = node, _sole_user(node)
    while (user is not None and user.op == "call_module" and user.args == (last,) and not user.kwargs
           and isinstance(module.get_submodule(user.target), FoldedBatchNorm)):
        last, user = user, _sole_user(user)
    return user, last


def _module_calls(graph):
    calls = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    return calls


def _region(node, targets):
    """The innermost module (path relative to the traced one; "" for itself) on ``node``'s module stack
    whose forward also calls every module in ``targets``: the module whose graph holds the whole pattern."""
    stack = [""] + [value[0] if isinstance(value, tuple) else str(value)
                    for value in node.meta.get("nn_module_stack", {}).values()]
    for path in reversed(stack):
        if all(path == "" or t.startswith(path + ".") for t in targets):
            return path
    return ""


class _CallFusion(NamedTuple):
    """A planned fusion of a functional activation: ``layer`` (qualified name) fuses ``activation`` computed
    by the call ``call`` (described, e.g. "F.relu"; fx node ``node`` of the planning trace) in the forward of
    module ``region``."""
    region: str
    layer: str
    activation: tuple  # (name, activation_params or None)
    call: str
    node: str


def _plan_fusions(model, convertible, report):
    """(pairs, calls). pairs: (layer name, activation name, activation) where the activation module directly
    follows a convertible Linear/Conv2d: adjacent in an nn.Sequential, or the activation's only input is the
    layer's output and its only use in a torch.fx trace. Both modules must be held in one place in the model
    and be called once, with no hooks (a hook would see the fused output). calls: :class:`_CallFusion` for
    functional activations (F.relu(layer(x))) found in torch.fx traces, the layer's output having no other use.
    FoldedBatchNorm placeholders between the layer and the activation are skipped (they are identities)."""
    slots = _slots(model)
    pairs, calls = [], []

    def layer_ok(layer):
        return id(layer) in convertible and type(layer) in (nn.Linear, nn.Conv2d)

    def why_not(*modules):
        if any(len(slots[id(m)]) != 1 for m in modules):
            return "the layer or the activation module is held in more than one place in the model"
        if any(_has_hooks(m) for m in modules):
            return "the layer or the activation has hooks, which would see the fused output"
        return None

    def fusable(layer, act, layer_name, act_name):
        if not layer_ok(layer):
            return False
        activation = activation_name(act)
        if activation is None:
            if isinstance(act, (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU)):
                report.left.append(Left(act_name, type(act).__name__,
                                        f"not fused into {layer_name}: a subclass of a torch activation"))
            return False
        why = why_not(layer, act)
        if why:
            report.left.append(Left(act_name, type(act).__name__, f"not fused into {layer_name}: {why}"))
            return False
        pairs.append((layer_name, act_name, (activation, activation_params(act))))
        return True

    def on_sequential(items):
        for i, (name, layer) in enumerate(items):
            j = i + 1
            while j < len(items) and isinstance(items[j][1], FoldedBatchNorm):
                j += 1
            if j < len(items):
                fusable(layer, items[j][1], name, items[j][0])

    def on_graph(module, prefix, graph):
        called = _module_calls(graph)
        for target, nodes in called.items():
            layer = module.get_submodule(target)
            if not layer_ok(layer) or len(nodes) != 1:
                continue
            user, last = _past_placeholders(module, nodes[0])
            if user is None:
                continue
            if user.op == "call_module":
                if user.args == (last,) and not user.kwargs and len(called[user.target]) == 1:
                    fusable(layer, module.get_submodule(user.target), _join(prefix, target),
                            _join(prefix, user.target))
                continue
            activation = _call_activation(user, last)
            if activation is None:
                continue
            chain = [n.target for n in _chain(nodes[0], last)]
            inner = _region(user, chain)
            region = _join(prefix, inner) if inner else prefix
            layer_name = _join(prefix, target)
            why = why_not(layer)
            if why:
                report.left.append(Left(f"{region or '<model>'}:{user.name}", _describe_call(user),
                                        f"not fused into {layer_name}: {why}"))
                continue
            calls.append(_CallFusion(region, layer_name, activation, _describe_call(user), user.name))

    _walk(model, report, on_sequential, on_graph)
    return pairs, calls


def _chain(first, last):
    """The nodes from ``first`` to ``last`` along sole users."""
    nodes = [first]
    while nodes[-1] is not last:
        nodes.append(_sole_user(nodes[-1]))
    return nodes


# ---------------------------------------------------------------------------------------------------------
# Functional activations: rewriting the module that calls them as a torch.fx GraphModule


def _trace_all_modes(module, leaves):
    """The module's torch.fx graph, or None when its forward takes another path in the other mode (train /
    eval): a GraphModule freezes the traced path, so only mode-independent forwards are rewritten."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        graph = _Tracer(leaves).trace(module)
        module.train(not module.training)
        other = _Tracer(leaves).trace(module)
    finally:
        for m, training in flags:
            m.training = training
    return graph if str(graph) == str(other) else None


def _graph_module(module, graph):
    """A GraphModule running ``graph`` that holds all of ``module``'s children, parameters and buffers in
    their order (unused ones included, so state_dict keys do not change and copies keep them) and its plain
    attributes."""
    first = next(n for n in graph.nodes if n.op != "placeholder")
    names = [k for store in (module._modules, module._parameters, module._buffers) for k, v in store.items()
             if v is not None]
    with graph.inserting_before(first):
        for name in names:
            graph.get_attr(name)  # unused: makes GraphModule (and its deepcopy) keep the attribute, in order
    gm = torch.fx.GraphModule(module, graph)
    gm.training = module.training
    extra = {k: v for k, v in module.__dict__.items() if not k.startswith("_") and k != "training"
             and k not in gm.__dict__}
    if extra:
        key = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
        gm.meta[key] = dict(extra)  # GraphModule's deepcopy sets these again
        for k, v in extra.items():
            setattr(gm, k, v)
    return gm


def _set_slot(model, path, new):
    if not path:
        return new
    parent_path, _, key = path.rpartition(".")
    model.get_submodule(parent_path)._modules[key] = new
    return model


def _fuse_calls(model, calls, report):
    """Removes the planned functional activation calls from the forward of the modules that make them, each
    such module becoming a GraphModule (innermost first; made ones are leaves of the outer traces).
    Returns (model, {layer name: (activation, call record)}); the model itself changes when it is rewritten."""
    by_region = defaultdict(list)
    for call in calls:
        by_region[call.region].append(call)
    made, fused = set(), {}
    for region in sorted(by_region, key=lambda r: -(r.count(".") + 1 if r else 0)):
        module = model.get_submodule(region)
        where = region or "<model>"
        why, graph = None, None
        if region and len(_slots(model)[id(module)]) != 1:
            why = f"{where} is held in more than one place in the model"
        elif _has_hooks(module):
            why = f"{where} has hooks, which its GraphModule would not keep"
        elif module._non_persistent_buffers_set:
            why = f"{where} has non-persistent buffers, which its GraphModule would not keep"
        else:
            try:
                graph = _trace_all_modes(module, made)
            except Exception as error:  # noqa: BLE001
                why = f"torch.fx could not trace {where} again ({type(error).__name__})"
            else:
                if graph is None:
                    why = f"the forward of {where} differs between train and eval mode (a GraphModule would freeze one)"
        done = []
        if why is None:
            called = _module_calls(graph)
            for call in by_region[region]:
                target = call.layer[len(region) + 1:] if region else call.layer
                nodes = called.get(target, [])
                user, last = _past_placeholders(module, nodes[0]) if len(nodes) == 1 else (None, None)
                if user is None or _call_activation(user, last) != call.activation:
                    report.left.append(Left(f"{where}:{call.node}", call.call, f"not fused into {call.layer}: "
                                            f"the call was not found again in the trace of {where}"))
                    continue
                record = (user.op, user.target, tuple(user.args[1:]), dict(user.kwargs))
                done.append((call, user.name))
                fused[call.layer] = (call.activation, record)
                user.replace_all_uses_with(last)
                graph.erase_node(user)
        else:
            for call in by_region[region]:
                report.left.append(Left(f"{where}:{call.node}", call.call, f"not fused into {call.layer}: {why}"))
        if not done:
            continue
        gm = _graph_module(module, graph)
        made.add(id(gm))
        model = _set_slot(model, region, gm)
        report.fused.extend(Fused(f"{where}:{name}", call.layer, call.activation[0]) for call, name in done)
    return model, fused


def _reinstate_calls(model):
    """revert's half of _fuse_calls: puts each removed activation call back after its layer's call."""
    for gm in [m for m in model.modules() if isinstance(m, torch.fx.GraphModule)]:
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_module":
                continue
            try:
                layer = gm.get_submodule(node.target)
            except AttributeError:
                continue
            record = getattr(layer, "_fused_call", None) if isinstance(layer, _OURS) else None
            if record is None:
                continue
            op, target, args, kwargs = record
            with gm.graph.inserting_after(node):
                call = gm.graph.create_node(op, target, (node, *args), dict(kwargs))
            node.replace_all_uses_with(call, delete_user_cb=lambda user, call=call: user is not call)
            layer._fused_call = None
            changed = True
        if changed:
            gm.recompile()


# ---------------------------------------------------------------------------------------------------------
# Conv2d -> activation -> MaxPool2d blocks


def _plan_pools(model, fresh, report):
    """(conv name, pool name) pairs, after the swap: a dlkernels Conv2d and MaxPool2d converted by this call
    (ids in ``fresh``) where the pool directly follows the conv, past only the placeholders of what was fused
    or folded into that conv (its activation, a BatchNorm): adjacent in an nn.Sequential, or the pool's input
    being the conv's output and its only use in a torch.fx trace. Both held in one place, called once, no
    hooks, a pooling the block computes (dilation 1, no indices) and a backend that runs the block; a pool
    that could fuse but does not gets a note saying why."""
    slots = _slots(model)
    pairs = []

    def is_conv(module):
        return id(module) in fresh and type(module) is Conv2d

    def between(module, conv_name):
        return isinstance(module, (FusedActivation, FoldedBatchNorm)) and module.into == conv_name

    def consider(conv, pool, conv_name, pool_name):
        if id(pool) not in fresh or type(pool) is not MaxPool2d:
            return
        why = pool_unsupported(pool)
        if why is None and (len(slots[id(conv)]) != 1 or len(slots[id(pool)]) != 1):
            why = "the conv or the pool is held in more than one place in the model"
        if why is None and (_has_hooks(conv) or _has_hooks(pool)):
            why = "the conv or the pool has hooks, which would see the fused output"
        if why is None:
            try:
                ops.select_backend("conv2d_maxpool", conv.backend, conv.weight.device)
            except Exception as error:  # noqa: BLE001 (any failure means the block cannot run)
                why = f"backend {conv.backend!r} cannot run the block: {error}"
        if why:
            report.notes.append(f"{pool_name} (MaxPool2d) not fused into {conv_name}: {why}")
        else:
            pairs.append((conv_name, pool_name))

    def on_sequential(items):
        for i, (name, layer) in enumerate(items):
            if not is_conv(layer):
                continue
            j = i + 1
            while j < len(items) and between(items[j][1], name):
                j += 1
            if j < len(items):
                consider(layer, items[j][1], name, items[j][0])

    def on_graph(module, prefix, graph):
        called = _module_calls(graph)
        for target, nodes in called.items():
            layer = module.get_submodule(target)
            if not is_conv(layer) or len(nodes) != 1:
                continue
            conv_name = _join(prefix, target)
            last, user = nodes[0], _sole_user(nodes[0])
            while (user is not None and user.op == "call_module" and user.args == (last,) and not user.kwargs
                   and between(module.get_submodule(user.target), conv_name)):
                last, user = user, _sole_user(user)
            if (user is None or user.op != "call_module" or user.args != (last,) or user.kwargs
                    or len(called[user.target]) != 1):
                continue
            consider(layer, module.get_submodule(user.target), conv_name, _join(prefix, user.target))

    _walk(model, report, on_sequential, on_graph, note=False)
    return pairs


def _fuse_pools(model, fresh, report):
    """Each planned conv becomes a Conv2dMaxPool block (sharing its parameters and fused activation) and its
    pool a FusedMaxPool placeholder; the pool moves from report.converted to report.pooled."""
    for conv_name, pool_name in _plan_pools(model, fresh, report):
        conv, pool = model.get_submodule(conv_name), model.get_submodule(pool_name)
        block = _rebuild(conv, Conv2dMaxPool)
        block._set_pool(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
        block._pool_fused_by_convert = True
        _set_slot(model, conv_name, block)
        _set_slot(model, pool_name, FusedMaxPool(pool.to_torch(), into=conv_name))
        report.converted = [c for c in report.converted if c.name != pool_name]
        report.pooled.append(Pooled(pool_name, conv_name))


# ---------------------------------------------------------------------------------------------------------
# BatchNorm folding


def _plan_folds(model, report):
    """(layer name, BatchNorm name) pairs: an inference-mode BatchNorm2d right after a Conv2d, or BatchNorm1d
    right after a Linear (torch's, or dlkernels' without an activation), in an nn.Sequential or a torch.fx
    trace; each held in one place, called once, without hooks. Raises ValueError for a BatchNorm that would
    fold but is in training mode or keeps no running statistics."""
    slots = _slots(model)
    pairs = []

    def foldable(layer, bn, layer_name, bn_name):
        if _BATCHNORM_AFTER.get(type(layer)) is not type(bn):
            return
        if isinstance(layer, _OURS) and layer.activation != "none":
            return
        if not layer.weight.is_floating_point():
            return
        width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        why = None
        if bn.num_features != width:
            why = f"it normalises {bn.num_features} features, {layer_name} gives {width}"
        elif len(slots[id(layer)]) != 1 or len(slots[id(bn)]) != 1:
            why = "the layer or the BatchNorm is held in more than one place in the model"
        elif _has_hooks(layer) or _has_hooks(bn):
            why = "the layer or the BatchNorm has hooks, which would see the folded output"
        if why:
            report.left.append(Left(bn_name, type(bn).__name__, f"not folded into {layer_name}: {why}"))
            return
        if bn.training:
            raise ValueError(
                f"dlkernels.fold_batchnorm: {bn_name} ({type(bn).__name__}) is in training mode; folding uses the "
                "running statistics and is for inference only: call model.eval() first"
            )
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"dlkernels.fold_batchnorm: {bn_name} ({type(bn).__name__}) has track_running_stats=False: it "
                "normalises with the statistics of each batch, which cannot be folded into a layer's weights"
            )
        pairs.append((layer_name, bn_name))

    def on_sequential(items):
        for (name, layer), (bn_name, bn) in zip(items, items[1:]):
            foldable(layer, bn, name, bn_name)

    def on_graph(module, prefix, graph):
        called = _module_calls(graph)
        for target, nodes in called.items():
            layer = module.get_submodule(target)
            if type(layer) not in _BATCHNORM_AFTER or len(nodes) != 1:
                continue
            user = _sole_user(nodes[0])
            if (user is None or user.op != "call_module" or user.args != (nodes[0],) or user.kwargs
                    or len(called[user.target]) != 1):
                continue
            foldable(layer, module.get_submodule(user.target), _join(prefix, target), _join(prefix, user.target))

    _walk(model, report, on_sequential, on_graph, note=False)
    return pairs


def _fold_weights(layer, bn):
    """layer's weight and bias become those of layer followed by bn (eval mode), computed in float64."""
    with torch.no_grad():
        weight = layer.weight.detach()
        w = weight.to(torch.float64)
        b = (layer.bias.detach().to(torch.float64) if layer.bias is not None
             else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
        mean = bn.running_mean.detach().to(w.device, torch.float64)
        inv_std = torch.rsqrt(bn.running_var.detach().to(w.device, torch.float64) + bn.eps)
        gamma = bn.weight.detach().to(w.device, torch.float64) if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.detach().to(w.device, torch.float64) if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma * inv_std
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - mean) * scale + beta
        weight.copy_(w)
        if layer.bias is None:
            layer.bias = nn.Parameter(b.to(weight.dtype), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.detach().copy_(b)


def _fold(model, report, caller):
    if model.training:
        raise ValueError(
            f"{caller}: the model ({type(model).__name__}) is in training mode; BatchNorm folding uses the running "
            "statistics and is for inference only: call model.eval() first"
        )
    if isinstance(model, (nn.BatchNorm1d, nn.BatchNorm2d)) or not model._modules:
        return model
    pairs = _plan_folds(model, report)
    into = {bn: layer for layer, bn in pairs}
    for layer, bn in pairs:
        _fold_weights(model.get_submodule(layer), model.get_submodule(bn))

    def replace(name, module):
        if name in into:
            report.folded.append(Folded(name, into[name]))
            return FoldedBatchNorm(module, into=into[name])
        return module

    _replace_slots(model, replace)
    return model


def fold_batchnorm(model, inplace=False, *, return_report=False):
    """Folds each inference-mode BatchNorm that directly follows a Conv2d (BatchNorm2d) or a Linear
    (BatchNorm1d) into that layer's weight and bias, for inference.

    The pairs are found like ``convert`` finds activations: next to each other in an nn.Sequential, or the
    BatchNorm's only input being the layer's output (and its only use) in a torch.fx trace. The folded weight
    and bias are computed in float64 and cast back to the layer's dtype; a layer without bias gets one. The
    BatchNorm's place is taken by a :class:`dlkernels.nn.FoldedBatchNorm` placeholder (an identity), so module
    names stay as they were; the BatchNorm's state_dict entries are gone and a new bias adds one. An activation
    after the BatchNorm then fuses into the layer with ``dlkernels.convert`` (``convert(model.eval(),
    fold_batchnorm=True)`` does both). ``dlkernels.revert`` keeps the folded layer and the placeholder: the
    model computes the same, but is not the BatchNorm model again (train it from the original).

    Linear -> BatchNorm1d is folded as for an (N, features) input, the usual MLP; a Linear whose output is
    (N, C, L) for BatchNorm1d's (N, C, L) form would normalise another axis: do not fold such a model.

    Args:
        model: an nn.Module in eval mode (``model.eval()``).
        inplace: change ``model`` itself; by default a deep copy is folded.
        return_report: also return a :class:`ConversionReport` listing the folds in ``report.folded``.

    Raises:
        ValueError: the model, or a BatchNorm that would fold, is in training mode; or such a BatchNorm has
            ``track_running_stats=False`` (it has no statistics to fold). The message names the module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dlkernels.fold_batchnorm: expected an nn.Module, got {type(model).__name__}")
    report = ConversionReport(None)
    if model.training:
        _fold(model, report, "dlkernels.fold_batchnorm")  # raises before copying anything
    if not inplace:
        model = copy.deepcopy(model)
    model = _fold(model, report, "dlkernels.fold_batchnorm")
    return (model, report) if return_report else model


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


def convert(model, backend="auto", fuse=True, inplace=False, *, fold_batchnorm=False, return_report=False):
    """Replaces every torch.nn.Linear, Conv2d and MaxPool2d of ``model`` by the dlkernels.nn layer that
    computes it with ``backend``, and with ``fuse=True`` folds an activation that directly follows a Linear or
    Conv2d into it.

    Args:
        model: an nn.Module (a single layer works too: it is returned converted).
        backend: "auto" (default), "native", "triton" or "reference", given to every converted layer.
        fuse: fold activations into the Linear / Conv2d before them when that layer's output goes nowhere else:
            - modules (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU (both forms), nn.SiLU): next to each other in an
              nn.Sequential (one that keeps Sequential's forward), or found by a torch.fx trace of a module.
              The activation's place is taken by a :class:`dlkernels.nn.FusedActivation` placeholder (an
              identity without parameters), so ``state_dict`` keys do not change and checkpoints load both ways.
            - function calls found by a torch.fx trace: ``F.relu(self.fc(x))`` (``inplace=True`` too),
              ``torch.relu``, ``torch.sigmoid``, ``torch.tanh``, ``x.relu()``, ``x.sigmoid()``, ``x.tanh()``,
              ``F.silu``, ``F.gelu(..., approximate="none" | "tanh")`` (and the other rows of
              ``_ACTIVATION_CALLS`` whose activation dlkernels has). The module whose forward makes the call
              becomes a ``torch.fx.GraphModule`` without it, with the same submodules, parameter names and
              ``state_dict`` keys; only a module whose forward is the same in train and eval mode is rewritten
              (the graph freezes one path), and only the modules where a call was fused change at all.
            - then a MaxPool2d right after such a Conv2d (after its fused activation, if any; dilation 1, no
              indices) fuses with it into a :class:`dlkernels.nn.Conv2dMaxPool` block, which pools the conv
              output while it is in cache and keeps only the pooled output for the backward. Found the same
              way (nn.Sequential neighbours, or a torch.fx trace); a :class:`dlkernels.nn.FusedMaxPool`
              placeholder takes the pool's place (``state_dict`` keys unchanged); ``report.pooled`` lists them.
        inplace: change ``model`` itself; by default a deep copy is converted and ``model`` is left as is. (When
            the model's own forward is rewritten as a GraphModule, the returned model is a new object holding
            ``model``'s converted submodules.)
        fold_batchnorm: first fold each BatchNorm that directly follows a Conv2d / Linear into it, as
            :func:`fold_batchnorm` does (inference only: the model must be in eval mode); the activation
            after the BatchNorm then fuses into the layer. ``report.folded`` lists the folds.
        return_report: also return a :class:`ConversionReport`.

    Returns:
        the converted model, or ``(model, report)`` with ``return_report=True``.

    Converted layers share nothing with the input model unless ``inplace=True`` (then they share its
    parameters). Only the exact classes are converted: subclasses of nn.Linear / Conv2d / MaxPool2d (which may
    have their own forward) and layers the backend cannot run are left as they are, listed in
    ``report.left``, and a warning names them. ``padding_mode`` "reflect" / "replicate" / "circular" convs
    are converted (padded first, as torch does). Already converted dlkernels layers are kept as they are.

    Fusion of activation modules through torch.fx follows the trace of the model's current mode: a forward that
    takes a different path in another mode (``if self.training:``) is only checked along the traced one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"dlkernels.convert: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"dlkernels.convert: expected an nn.Module, got {type(model).__name__}")
    report = ConversionReport(backend)
    if fold_batchnorm and model.training:
        _fold(model, report, "dlkernels.convert(fold_batchnorm=True)")  # raises before copying anything
    if not inplace:
        model = copy.deepcopy(model)
    if fold_batchnorm:
        model = _fold(model, report, "dlkernels.convert(fold_batchnorm=True)")
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
    fusions, calls = _plan_fusions(model, convertible, report) if fuse else ([], [])
    fused_activation = {layer: activation for layer, _, activation in fusions}
    placeholders = {act: (layer, activation[0]) for layer, act, activation in fusions}
    # ... and functional activations, removed from the graphs of the modules that call them.
    fused_calls = {}
    if calls:
        call_report = ConversionReport(backend)
        model, fused_calls = _fuse_calls(model, calls, call_report)
        report.left.extend(call_report.left)
        fused_activation.update({layer: activation for layer, (activation, _) in fused_calls.items()})

    # 3. Swap: layers (sharing the parameters of the deep copy) and placeholders for fused activations.
    fresh = set()  # ids of the layers made by this call
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
                    activation, params = fused_activation.get(name, ("none", None))
                    new = cls.from_torch(module, activation=activation, activation_params=params, backend=backend)
                    new._fused_by_convert = name in fused_activation
                    new._fused_call = fused_calls[name][1] if name in fused_calls else None
                activation = fused_activation.get(name, ("none",))[0]
                report.converted.append(Converted(name, type(module).__name__, activation))
                fresh.add(id(new))
                return new
            if name in placeholders:
                layer, activation = placeholders[name]
                report.fused.append(Fused(name, layer, activation))
                return FusedActivation(module, into=layer)
            return module

        _replace_slots(model, replace)
    if calls:
        report.fused.extend(call_report.fused)
    # 4. Conv2d (-> its fused activation) -> MaxPool2d: one Conv2dMaxPool block.
    if fuse and fresh:
        _fuse_pools(model, fresh, report)

    report._model = weakref.ref(model)
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
    """Gives back the model with plain torch.nn layers: each dlkernels.nn Linear / Conv2d / MaxPool2d becomes the
    torch.nn layer with the same parameters (a Conv2dMaxPool block its Conv2d), and each FusedActivation / FusedMaxPool
    placeholder becomes the original activation / MaxPool2d module again, so the model computes what it did before
    ``convert`` and has the same ``state_dict`` keys. A functional activation that ``convert`` fused is put back
    into the torch.fx graph of the module that called it: that module stays a ``torch.fx.GraphModule`` (with plain
    torch layers and the original call), which computes what the original module did. A BatchNorm folded by
    ``fold_batchnorm`` stays folded: the layer keeps the folded weight and bias and the
    :class:`~dlkernels.nn.FoldedBatchNorm` placeholder (an identity) stays, so the model computes what the eval-mode
    original did, but has no BatchNorm to train.

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
        if isinstance(module, (FusedActivation, FusedMaxPool)):
            return module.original
        if isinstance(module, _OURS):
            plain = module.to_torch()
            act = module.activation_module()
            extra = [] if act is None or module._fused_by_convert else [act]
            if isinstance(module, Conv2dMaxPool) and not module._pool_fused_by_convert:
                extra.append(module.pool_module())
            if not extra:
                return plain
            what = f"activation {module.activation!r}" if act is not None and not module._fused_by_convert else ""
            if isinstance(module, Conv2dMaxPool) and not module._pool_fused_by_convert:
                what += (" and " if what else "") + "a max pooling"
            warnings.warn(
                f"dlkernels.revert: {name or '<model>'} has {what} that convert() did not fuse; it becomes "
                f"nn.Sequential({', '.join(type(m).__name__ for m in (plain, *extra))}) and its state_dict keys "
                "gain the prefix '0.'",
                UserWarning,
                stacklevel=3,
            )
            return nn.Sequential(plain, *extra)
        return module

    if isinstance(model, (FusedActivation, FusedMaxPool, *_OURS)):
        return replace("", model)
    _reinstate_calls(model)
    _replace_slots(model, replace)
    return model
