"""The PTX wrappers of csrc/cuda/ptx.cuh and the warp intrinsics, register by register, against the PTX ISA's
tables written out here (chapter "Warp Level Matrix Multiply-Accumulate Instructions": sections "Matrix
Fragments for mma.m16n8k16 with floating point type", "Matrix Fragments for mma.m16n8k8", and ldmatrix) and a
float64 matmul. The probe kernels (csrc/cuda/ptx_probe_cuda.cu) run in the CUDA emulator on CPU tensors, and
on the GPU when there is one: the same tables then check the hardware, and so the emulator's model."""
import pytest
import torch

from dlkernels import cuda_emu
from conftest import REQUIRE_CUDA_EMU

TARGETS = ["emu"] + (["gpu"] if torch.cuda.is_available() else [])


def probe_ops(target):
    if target == "emu":
        if not cuda_emu.loaded():
            if REQUIRE_CUDA_EMU:
                pytest.fail(f"the CUDA emulator did not build or load ({cuda_emu.LOAD_ERROR})")
            pytest.skip(f"the CUDA emulator is not built ({cuda_emu.LOAD_ERROR})")
        return torch.ops.dlkernels_cuda_emu_probe, "cpu"
    return torch.ops.dlkernels_probe, "cuda"


# ---------------------------------------------------------------------------------------------------------
# The PTX ISA's fragment tables: for lane l, g = l >> 2 and t = l % 4.

def a_fragment(kind, lane):
    """(row, col) of each element of A held by the lane, in register order (two per register for 16-bit)."""
    g, t = lane >> 2, lane % 4
    if kind == "tf32":
        return [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]
    return [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1),
            (g, 2 * t + 8), (g, 2 * t + 9), (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]


def b_fragment(kind, lane):
    """(k, n) of each element of B (K x N) held by the lane."""
    g, t = lane >> 2, lane % 4
    if kind == "tf32":
        return [(t, g), (t + 4, g)]
    return [(2 * t, g), (2 * t + 1, g), (2 * t + 8, g), (2 * t + 9, g)]


def c_fragment(lane):
    g, t = lane >> 2, lane % 4
    return [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]


def test_tables_cover_each_element_once():
    for kind, (rows, cols) in (("bf16", (16, 16)), ("tf32", (16, 8))):
        cells = [rc for lane in range(32) for rc in a_fragment(kind, lane)]
        assert sorted(cells) == [(r, c) for r in range(rows) for c in range(cols)]
        k = cols
        cells = [kn for lane in range(32) for kn in b_fragment(kind, lane)]
        assert sorted(cells) == [(i, n) for i in range(k) for n in range(8)]
    assert sorted(rc for lane in range(32) for rc in c_fragment(lane)) == [(r, c) for r in range(16) for c in range(8)]


def bits16(values, dtype):
    return values.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF


def pack_registers(matrix, cells, per_register, dtype):
    """[32, registers] int32 from a matrix and each lane's cells."""
    regs = []
    for lane in range(32):
        idx = cells(lane)
        if per_register == 2:
            vals = bits16(torch.stack([matrix[r, c] for r, c in idx]), dtype)
            lane_regs = [(vals[2 * i] | (vals[2 * i + 1] << 16)) for i in range(len(idx) // 2)]
        else:
            vals = torch.stack([matrix[r, c] for r, c in idx]).to(torch.float32).view(torch.int32).to(torch.int64)
            lane_regs = list(vals)
        regs.append(torch.stack(lane_regs))
    out = torch.stack(regs)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["bf16", "f16", "tf32"])
def test_mma_against_float64_matmul(target, kind):
    ops, device = probe_ops(target)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "tf32": torch.float32}[kind]
    K = 8 if kind == "tf32" else 16
    g = torch.Generator().manual_seed(7)
    A = torch.randn(16, K, generator=g).to(dtype)
    B = torch.randn(K, 8, generator=g).to(dtype)
    if kind == "tf32":  # values tf32 holds exactly: the test is of the layout, not of the truncation
        A = (A.view(torch.int32) & ~0x1FFF).view(torch.float32)
        B = (B.view(torch.int32) & ~0x1FFF).view(torch.float32)
    C = torch.randn(16, 8, generator=g)
    per = 1 if kind == "tf32" else 2
    a = pack_registers(A, lambda lane: a_fragment(kind, lane), per, dtype)
    b = pack_registers(B, lambda lane: b_fragment(kind, lane), per, dtype)
    c = torch.stack([torch.stack([C[r, col] for r, col in c_fragment(lane)]) for lane in range(32)])
    d = ops.mma(a.to(device), b.to(device), c.contiguous().to(device), kind).cpu()
    D = torch.empty(16, 8)
    for lane in range(32):
        for i, (r, col) in enumerate(c_fragment(lane)):
            D[r, col] = d[lane, i]
    expected = A.double() @ B.double() + C.double()
    torch.testing.assert_close(D.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["", "trans"])
def test_ldmatrix_lane_layout(target, num, trans):
    ops, device = probe_ops(target)
    code = torch.arange(num * 64, dtype=torch.int16)  # matrix m, row r, column c holds m*64 + r*8 + c
    out = ops.ldmatrix(code.to(device), num, trans).cpu().to(torch.int64) & 0xFFFFFFFF
    for lane in range(32):
        for m in range(num):
            lo, hi = int(out[lane, m]) & 0xFFFF, int(out[lane, m]) >> 16
            if not trans:
                expected = (m * 64 + (lane // 4) * 8 + 2 * (lane % 4), m * 64 + (lane // 4) * 8 + 2 * (lane % 4) + 1)
            else:
                expected = (m * 64 + 2 * (lane % 4) * 8 + lane // 4, m * 64 + (2 * (lane % 4) + 1) * 8 + lane // 4)
            assert (lo, hi) == expected, (lane, m)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("copy_bytes,cache_global", [(4, False), (8, False), (16, False), (16, True)])
@pytest.mark.parametrize("src_part", ["all", "part", "none"])
def test_cp_async_copies_and_zero_fills(target, copy_bytes, cache_global, src_part):
    ops, device = probe_ops(target)
    src_bytes = {"all": copy_bytes, "part": copy_bytes // 2, "none": 0}[src_part]
    src = torch.arange(64 * copy_bytes, dtype=torch.int64).remainder(251).add(1).to(torch.uint8)
    out = ops.cp_async(src.to(device), copy_bytes, src_bytes, cache_global, 0).cpu()
    expected = src[:32 * copy_bytes].view(32, copy_bytes).clone()
    expected[:, src_bytes:] = 0
    assert torch.equal(out[:32 * copy_bytes].view(32, copy_bytes), expected)


@pytest.mark.parametrize("target", TARGETS)
def test_cp_async_wait_group_completes_the_older_groups(target):
    ops, device = probe_ops(target)
    src = torch.arange(64 * 16, dtype=torch.int64).remainder(251).add(1).to(torch.uint8)
    out = ops.cp_async(src.to(device), 16, 16, True, 2).cpu()
    assert torch.equal(out[:512], src[:512])  # the first group: covered by wait_group 1
    if target == "emu":  # the second may have landed on a GPU; in the emulator it lands only when waited for
        assert (out[512:] == 0xFF).all()


def test_cp_async_data_lands_only_at_the_wait():
    ops, device = probe_ops("emu")
    src = torch.arange(32 * 16, dtype=torch.int64).remainder(251).add(1).to(torch.uint8).repeat(2)
    out = ops.cp_async(src, 16, 16, False, 1)  # shared memory read back before the wait
    assert (out == 0xFF).all()  # the emulator's poison: nothing landed


def shuffle_model(values, op, arg, width, mask):
    out = list(values)
    ballot = sum(1 << lane for lane in range(32) if mask >> lane & 1 and values[lane])
    for lane in range(32):
        if not mask >> lane & 1:
            continue
        seg = lane // width * width
        if op == "shfl":
            src = seg + arg % width
        elif op == "shfl_up":
            src = lane if lane - seg - arg < 0 else lane - arg
        elif op == "shfl_down":
            src = lane if lane - seg + arg >= width else lane + arg
        elif op == "shfl_xor":
            src = lane ^ arg
            src = lane if src >= seg + width else src
        if op.startswith("shfl"):
            out[lane] = values[src]
        elif op == "ballot":
            out[lane] = ballot - (1 << 32) if ballot >= 1 << 31 else ballot
        elif op == "any":
            out[lane] = int(ballot != 0)
        elif op == "all":
            out[lane] = int(ballot == mask)
    return out


WARP_CASES = [
    ("shfl", 5, 32, 0xFFFFFFFF), ("shfl", 3, 8, 0xFFFFFFFF), ("shfl", 37, 16, 0xFFFFFFFF),
    ("shfl_up", 1, 32, 0xFFFFFFFF), ("shfl_up", 2, 8, 0xFFFFFFFF), ("shfl_down", 4, 32, 0xFFFFFFFF),
    ("shfl_down", 1, 4, 0xFFFFFFFF), ("shfl_xor", 16, 32, 0xFFFFFFFF), ("shfl_xor", 1, 32, 0xFFFFFFFF),
    ("shfl_xor", 8, 8, 0xFFFFFFFF), ("shfl_xor", 2, 16, 0x0000FFFF), ("shfl", 1, 16, 0x0000FFFF),
    ("ballot", 0, 32, 0xFFFFFFFF), ("ballot", 0, 32, 0x00FF00FF), ("any", 0, 32, 0xFFFFFFFF),
    ("any", 0, 32, 0x0000000F), ("all", 0, 32, 0xFFFFFFFF), ("all", 0, 32, 0x0000F000),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op,arg,width,mask", WARP_CASES)
def test_warp_collectives(target, op, arg, width, mask):
    ops, device = probe_ops(target)
    if op in ("ballot", "any", "all"):
        values = [(lane * 7 + 3) % 5 == 0 or lane in (12, 13, 14, 15) for lane in range(32)]
        values = [int(v) for v in values]
    else:
        values = [100 + lane * 3 for lane in range(32)]
    signed_mask = mask - (1 << 32) if mask >= 1 << 31 else mask
    out = ops.warp(torch.tensor(values, dtype=torch.int32).to(device), op, arg, width, signed_mask).cpu()
    assert out.tolist() == shuffle_model(values, op, arg, width, mask)


@pytest.mark.parametrize("target", TARGETS)
def test_to_tf32_rounds_to_nearest_away(target):
    ops, device = probe_ops(target)
    one = 0x3F800000
    bits = torch.tensor([one, one | 0x0FFF, one | 0x1000, one | 0x1001, one | 0x3000, 0x7F800000, 0x7FC00001],
                        dtype=torch.int64)
    x = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)
    out = ops.to_tf32(x.to(device)).cpu().to(torch.int64) & 0xFFFFFFFF
    assert out[:5].tolist() == [one, one, one | 0x2000, one | 0x2000, one | 0x4000]
    assert out[5] == 0x7F800000 and (out[6] & 0x7F800000) == 0x7F800000 and (out[6] & 0x007FE000) != 0
