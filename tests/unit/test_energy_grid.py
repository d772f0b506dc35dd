"""The shared step grid: exact at nodes, linear between them, held at the edges."""

from __future__ import annotations

import itertools

import pytest
from wattkeeper.energy.grid import StepGrid, locate


def _table(grid: StepGrid) -> list[list[list[float]]]:
    # A trilinear function is reproduced exactly by trilinear interpolation.
    return [[[1.0 + 2.0 * b + 0.5 * c + 0.25 * p + 0.01 * b * c * p / 1e3 for p in grid.prompt_nodes]
             for c in grid.context_nodes] for b in grid.batch_nodes]


def test_locate_clamps_and_weights() -> None:
    assert locate([0, 10, 20], -5) == (0, 0.0)
    assert locate([0, 10, 20], 25) == (1, 1.0)
    assert locate([0, 10, 20], 15) == (1, 0.5)
    assert locate([7], 100) == (0, 0.0)


def test_read_is_exact_at_nodes_and_trilinear_between() -> None:
    grid = StepGrid([0, 1, 4, 16], [128, 1024], [0, 512, 2048])
    table = _table(grid)
    for (i, b), (j, c), (k, p) in itertools.product(*(enumerate(n) for n in (grid.batch_nodes, grid.context_nodes,
                                                                               grid.prompt_nodes))):
        assert grid.read(table, grid.position(b, c, p)) == pytest.approx(table[i][j][k])
    b, c, p = 2.5, 600.0, 1000.0
    expected = 1.0 + 2.0 * b + 0.5 * c + 0.25 * p + 0.01 * b * c * p / 1e3
    assert grid.read(table, grid.position(b, c, p)) == pytest.approx(expected)


def test_single_prompt_node_grid_reads_without_index_error() -> None:
    grid = StepGrid([0, 8], [128, 1024], [0])
    table = [[[1.0], [2.0]], [[3.0], [4.0]]]
    assert grid.read(table, grid.position(4, 576, 100)) == pytest.approx(2.5)
