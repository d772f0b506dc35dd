"""Step figures tabulated on a batch x context x prompt-token grid, read back by trilinear interpolation.

The planner's replay (`planner/verify.py`) and the benchmark's ground truth (`bench/groundtruth.py`) evaluate the
model once per configuration on such a grid and read it once per simulated engine step, a hot loop: hence plain
nested lists and `bisect`, not numpy scalars. Outside the grid a figure is held at its edge.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# (batch index, batch weight, context index, context weight, prompt index, prompt weight)
GridPosition = tuple[int, float, int, float, int, float]
Table = list[list[list[float]]]


def locate(nodes: Sequence[float], x: float) -> tuple[int, float]:
    """The cell of sorted `nodes` that holds `x`, and `x`'s weight towards its upper node (clamped to [0, 1])."""
    if x <= nodes[0] or len(nodes) == 1:
        return 0, 0.0
    if x >= nodes[-1]:
        return len(nodes) - 2, 1.0
    i = bisect.bisect_right(nodes, x) - 1
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


class StepGrid:
    """The nodes of one grid; `position` once per step, then `read` for each table (step seconds, watts)."""

    def __init__(self, batch_nodes: Sequence[int], context_nodes: Sequence[int], prompt_nodes: Sequence[int]) -> None:
        self.batch_nodes = list(batch_nodes)
        self.context_nodes = list(context_nodes)
        self.prompt_nodes = list(prompt_nodes)

    def position(self, batch: float, context: float, prompt: float) -> GridPosition:
        bi, bw = locate(self.batch_nodes, batch)
        ci, cw = locate(self.context_nodes, context)
        pi, pw = locate(self.prompt_nodes, prompt)
        return bi, bw, ci, cw, pi, pw

    @staticmethod
    def read(table: Table, at: GridPosition) -> float:
        bi, bw, ci, cw, pi, pw = at
        total = 0.0
        for db, wb in ((0, 1.0 - bw), (1, bw)):
            if wb == 0.0:
                continue
            plane = table[bi + db]
            for dc, wc in ((0, 1.0 - cw), (1, cw)):
                if wc == 0.0:
                    continue
                row = plane[ci + dc]
                total += wb * wc * (row[pi] * (1.0 - pw) + (row[pi + 1] * pw if pw else 0.0))
        return total
