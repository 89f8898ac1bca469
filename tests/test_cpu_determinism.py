"""The CPU kernels give the same bits whatever the thread count: the GEMM's task grid, the skinny kernels'
split and the pooling backward's partition all change with it, the order of each element's additions
must not."""
import pytest
import torch

import dlkernels
from conftest import make_input, require_backend


def run_at(threads, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def forward_and_grads(op, inputs):
    inputs = [t.clone().requires_grad_() for t in inputs]
    out = op(*inputs)
    grads = torch.autograd.grad(out, inputs, make_input(*out.shape, seed=9))
    return [out.detach(), *grads]


def linear(activation):
    return lambda x, w, b: dlkernels.ops.linear_act(x, w, b, activation, backend="native")


CASES = {
    # batch 1 and 3 (skinny kernels), and a GEMM whose last column panel is narrow
    "linear_m1": (linear("relu"), [(1, 300), (200, 300), (200,)]),
    "linear_m3": (linear("gelu"), [(3, 70), (37, 70), (37,)]),
    # batch 8 (AVX2: the axpy form's runs of columns depend on the thread count)
    "linear_m8": (linear("relu"), [(8, 1100), (20, 1100), (20,)]),
    "linear_m40": (linear("relu"), [(40, 129), (196, 129), (196,)]),
    # batch 1 on a 14x14 image: few tasks (balanced grid), 196 = 6 x 32 + 4 columns (half-width kernel)
    "conv_14x14": (lambda x, w, b: dlkernels.ops.conv2d(x, w, b, 1, 1, activation="relu", backend="native"),
                   [(1, 32, 14, 14), (48, 32, 3, 3), (48,)]),
    # few channels (the direct kernels): grad_w's tasks are (input channel, output channels, taps)
    "conv_small": (lambda x, w, b: dlkernels.ops.conv2d(x, w, b, 1, 1, activation="relu", backend="native"),
                   [(5, 10, 28, 28), (10, 10, 3, 3), (10,)]),
    # a strided 3-channel stem: grad_w's tasks are (image, block of outputs, taps), the images added after
    "conv_stem_s2": (lambda x, w, b: dlkernels.ops.conv2d(x, w, b, 2, 1, activation="relu", backend="native"),
                     [(5, 3, 33, 31), (32, 3, 3, 3), (32,)]),
    "pool_overlapping": (lambda x: dlkernels.ops.max_pool2d(x, 3, 2, 1, backend="native"), [(2, 24, 15, 17)]),
    # the fused block: its bands and channel blocks depend on the thread count, its results must not
    "conv_maxpool_2x2": (lambda x, w, b: dlkernels.ops.conv2d_maxpool(x, w, b, 1, 1, backend="native"),
                         [(2, 16, 30, 33), (40, 16, 3, 3), (40,)]),
    "conv_maxpool_small": (lambda x, w, b: dlkernels.ops.conv2d_maxpool(x, w, b, 1, 1, backend="native"),
                           [(3, 3, 28, 30), (10, 3, 3, 3), (10,)]),
    "conv_maxpool_3x3s2": (lambda x, w, b: dlkernels.ops.conv2d_maxpool(x, w, b, 1, 1, activation="gelu",
                                                                        pool_kernel_size=3, pool_stride=2,
                                                                        pool_padding=1, backend="native"),
                           [(1, 8, 23, 19), (24, 8, 3, 3), (24,)]),
    # depthwise on channels-last tensors as they lie: the forward's bands of output rows (split over threads),
    # grad_w's blocks of channels over the batch, the stride-2 grad_x's blocks of channels of an image;
    # grad_bias sums the pixels in order
    "conv_dw7x7_channels_last": (lambda x, w, b: dlkernels.ops.conv2d(x.contiguous(memory_format=torch.channels_last),
                                                                      w, b, 1, 3, groups=96, activation="gelu",
                                                                      backend="native"),
                                 [(3, 96, 11, 13), (96, 1, 7, 7), (96,)]),
    "conv_dw3x3s2_channels_last": (lambda x, w, b: dlkernels.ops.conv2d(
        x.contiguous(memory_format=torch.channels_last), w, b, 2, 1, groups=40, activation="relu", backend="native"),
                                   [(2, 40, 19, 17), (40, 1, 3, 3), (40,)]),
    "pool_channels_last": (lambda x: dlkernels.ops.max_pool2d(x.contiguous(memory_format=torch.channels_last),
                                                              3, 2, 1, backend="native"), [(3, 24, 15, 17)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_bits_at_one_and_many_threads(name):
    require_backend("native", "cpu")
    op, shapes = CASES[name]
    inputs = [make_input(*shape, seed=i) for i, shape in enumerate(shapes)]
    many = max(2, torch.get_num_threads())
    one = run_at(1, lambda: forward_and_grads(op, inputs))
    several = run_at(many, lambda: forward_and_grads(op, inputs))
    for a, b in zip(one, several):
        assert torch.equal(a, b)
