"""torch.compile(fullgraph=True) over a small CNN that uses every op, forward and backward, for the custom ops
of every backend's namespace."""
import pytest
import torch

import dlkernels
from conftest import BACKEND_OF_NAMESPACE, NAMESPACES, device_params, make_input, require_namespace


class TinyNet(torch.nn.Module):
    """Conv+ReLU -> MaxPool -> Conv+GELU -> MaxPool (with indices) -> Linear+SiLU -> Linear, plus a branch
    through the fused Conv+SiLU+MaxPool block, every op through the custom ops of one backend."""

    def __init__(self, device, dtype, backend):
        super().__init__()
        self.backend = backend
        p = lambda *shape, seed: torch.nn.Parameter(make_input(*shape, dtype=dtype, device=device, seed=seed) * 0.3)
        self.w1, self.b1 = p(8, 3, 3, 3, seed=1), p(8, seed=2)
        self.w2, self.b2 = p(8, 4, 3, 3, seed=3), p(8, seed=4)
        self.w3, self.b3 = p(16, 8 * 2 * 2, seed=5), p(16, seed=6)
        self.w4 = p(5, 16, seed=7)
        self.w5, self.b5 = p(5, 3, 3, 3, seed=8), p(5, seed=9)

    def forward(self, x):
        b = self.backend
        block = dlkernels.ops.conv2d_maxpool(x, self.w5, self.b5, padding=1, activation="silu", pool_kernel_size=3,
                                             pool_stride=2, pool_padding=1, pool_ceil_mode=True, backend=b)
        x = dlkernels.ops.conv2d(x, self.w1, self.b1, padding=1, activation="relu", backend=b)
        x = dlkernels.ops.max_pool2d(x, 2, backend=b)
        x = dlkernels.ops.conv2d(x, self.w2, self.b2, padding="same", groups=2, activation="gelu", backend=b)
        x, _ = dlkernels.ops.max_pool2d(x, 3, 2, 1, return_indices=True, backend=b)
        x = dlkernels.ops.linear_act(x.flatten(1), self.w3, self.b3, "silu", backend=b)
        return dlkernels.ops.linear_act(x, self.w4, None, "none", backend=b) + block.mean((2, 3))


def run_and_grads(model, x):
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()) + [x])
    return out, grads


@pytest.mark.slow
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_compile_fullgraph_forward_backward(namespace, device):
    require_namespace(namespace, device)
    torch._dynamo.reset()
    model = TinyNet(device, torch.float32, BACKEND_OF_NAMESPACE[namespace])
    x = make_input(2, 3, 8, 8, device=device, seed=8).requires_grad_()
    expected_out, expected_grads = run_and_grads(model, x)
    compiled = torch.compile(model, fullgraph=True)
    out, grads = run_and_grads(compiled, x)
    torch.testing.assert_close(out, expected_out)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected)


@pytest.mark.slow
def test_compiled_autograd_native():
    """Compiled autograd (torch._dynamo.config.compiled_autograd) takes the native ops' C++ autograd nodes
    (csrc/autograd.cpp): TinyNet's backward comes out as in eager mode, with a frozen first weight (so its
    backward gets a stand-in for x, which it does not save)."""
    require_namespace("dlkernels", "cpu")
    torch._dynamo.reset()
    model = TinyNet("cpu", torch.float32, "native")
    model.w1.requires_grad_(False)
    x = make_input(2, 3, 8, 8, seed=8).requires_grad_()
    leaves = [p for p in model.parameters() if p.requires_grad] + [x]
    expected_out = model(x)
    expected_grads = torch.autograd.grad(expected_out.square().sum(), leaves)

    counters = torch._dynamo.utils.counters
    counters.clear()
    try:
        # Set before torch.compile wraps the step: the backward call inside it then runs compiled.
        torch._dynamo.config.compiled_autograd = True

        @torch.compile(backend="eager")
        def train_step(x):
            out = model(x)
            out.square().sum().backward()
            return out

        out = train_step(x)
    finally:
        torch._dynamo.config.compiled_autograd = False
    assert counters["compiled_autograd"]["captures"] >= 1
    torch.testing.assert_close(out, expected_out)
    for leaf, expected in zip(leaves, expected_grads):
        torch.testing.assert_close(leaf.grad, expected)


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_compile_reduce_overhead_cuda_graphs(namespace):
    """CUDA graphs replay on their own stream: a kernel launched on the default stream gives wrong results."""
    require_namespace(namespace, "cuda")
    torch._dynamo.reset()
    model = TinyNet("cuda", torch.float32, BACKEND_OF_NAMESPACE[namespace])
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # the first calls record, the later ones replay the graph
        x = make_input(4, 3, 8, 8, device="cuda", seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x).clone(), model(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("autotune", ["0", "1"])
def test_converted_model_in_a_cuda_graph(autotune, monkeypatch, tmp_path):
    """A converted model captured by torch.cuda.graph replays with new inputs. With auto measuring, the
    warm-up calls measure (outside the capture) and the capture reuses their choices; inside the capture
    nothing is measured (autotune sees the capture and takes the static rule)."""
    monkeypatch.setenv("DLKERNELS_AUTOTUNE", autotune)
    monkeypatch.setenv("DLKERNELS_CACHE_DIR", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)).cuda().eval()
    converted = dlkernels.convert(model)
    static_x = make_input(2, 3, 8, 8, device="cuda", seed=0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            converted(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = converted(static_x)
    for seed in range(1, 4):
        static_x.copy_(make_input(2, 3, 8, 8, device="cuda", seed=seed))
        graph.replay()
        with torch.no_grad():
            torch.testing.assert_close(static_out, model(static_x))
