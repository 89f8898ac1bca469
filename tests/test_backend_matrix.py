"""The test matrices themselves (conftest.backend_matrix): compiled backends get every combination, the
interpreted ones every pair of values, so thinning them cannot silently drop a value or a pair."""
import itertools

import pytest
import torch

from conftest import INTERPRETED, all_pairs, backend_matrix


@pytest.mark.parametrize("sizes", [(), (5,), (2, 2), (3, 7, 6, 2), (3, 7, 4, 2), (3, 7, 2), (2, 3, 5), (3, 3, 3, 3),
                                   (1, 4, 1, 3)])
def test_all_pairs_covers_every_pair(sizes):
    rows = all_pairs(sizes)
    assert all(len(row) == len(sizes) for row in rows)
    assert all(0 <= v < size for row in rows for v, size in zip(row, sizes))
    for a, b in itertools.combinations(range(len(sizes)), 2):
        seen = {(row[a], row[b]) for row in rows}
        assert seen == set(itertools.product(range(sizes[a]), range(sizes[b]))), (a, b)
    for a, size in enumerate(sizes):
        assert {row[a] for row in rows} == set(range(size))
    # About the product of the two largest axes, never the whole product when there are three or more.
    largest = sorted(sizes, reverse=True)
    if len(sizes) >= 2:
        assert len(rows) <= largest[0] * largest[1] + sum(largest[2:]) ** 2
    assert all_pairs(sizes) == rows  # deterministic


def test_backend_matrix_thins_only_interpreted_backends():
    dtypes = [("cpu", torch.float32), ("cpu", torch.float64), ("cpu", torch.bfloat16)]
    argnames, params = backend_matrix(("device,dtype", dtypes), ("activation", ["none", "relu", "gelu", "silu"]),
                                      ("case", [(1, 2), (3, 4)], ["small", "large"]), ("flag", [False, True]),
                                      backends=["native", "triton", "cuda_emu"])
    assert argnames == "backend,device,dtype,activation,case,flag"
    rows = {}
    for p in params:
        assert len(p.values) == 6
        rows.setdefault(p.values[0], []).append(p.values[1:])
    assert len(rows["native"]) == 3 * 4 * 2 * 2 and len(set(rows["native"])) == len(rows["native"])
    for backend in ("triton", "cuda_emu"):
        expected = 3 * 4 * 2 * 2 if backend not in INTERPRETED else 3 * 4
        assert len(rows[backend]) == expected
    ids = [p.id for p in params]
    assert len(set(ids)) == len(ids)
    assert "native-cpu-bfloat16-gelu-large-True" in ids
