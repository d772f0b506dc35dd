"""Ground truth for the fleet simulator: what one replica's engine step costs in time and power.

Where ML.ENERGY measured the (model, GPU, precision, TP) being simulated, the measured steady states decide: at
each measured batch the measured step time (batch / output tokens per second) and power are divided by the
calibrated model's figures under the same conditions, and those ratios, interpolated in log(batch) and held flat
beyond the measured range, scale the model's step time and power. The model still supplies how a step varies
with its context length and the prefill tokens riding in it (the measurements only give averages). Where nothing
was measured, the calibrated model alone is used. `GroundTruth.source()` says which, for the report.

Model evaluations go through the energy model's vectorised evaluator once per configuration, into a table over
(decode batch, context, prefill tokens) that a step looks up by trilinear interpolation: a replay asks millions
of questions, and one scalar model call costs ~0.1 ms.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..energy.catalog import Accelerator, get_accelerator, get_precision, model_from_name
from ..energy.datasets import MeasuredRow, mlenergy_csv, read_mlenergy
from ..energy.model import TASK_INPUT_PARAMETER, EnergyModel
from ..energy.types import ModelShape, ServingConfig

FloatArray = npt.NDArray[np.float64]

# Table nodes. Step time is close to linear in the batch and the prefill tokens between these nodes.
_BATCH_NODES = tuple(range(0, 17)) + tuple(range(24, 257, 8)) + tuple(range(288, 2049, 32))
_CONTEXT_NODES = (16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768, 131072)
_PROMPT_NODES = (0, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768)
# Tasks whose prompts look most like a chat service's, in order of preference.
_TASK_PREFERENCE = ("lm-arena-chat", "gpqa", "sourcegraph-fim")


def parse_params_b(name: str) -> float | None:
    """Parameters in billions from a model name such as Llama-3.1-70B-Instruct (None when it says none)."""
    matches = re.findall(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[bB](?![A-Za-z])", name.replace("_", "-"))
    return float(matches[-1]) if matches else None


def model_shape(name: str, params_b: float | None = None) -> ModelShape:
    params = params_b if params_b is not None else parse_params_b(name)
    if params is None:
        raise ValueError(f"cannot tell the parameter count of {name!r}: pass --params-b")
    return model_from_name(name, params)


def _short_name(model_id: str) -> str:
    return model_id.split("/")[-1].lower()


@dataclass(frozen=True)
class MeasuredCurve:
    """ML.ENERGY's steady states of one (model, GPU, precision, TP), sorted by batch."""

    model_id: str
    task: str
    batch: FloatArray
    step_seconds: FloatArray
    watts: FloatArray
    output_tokens: float  # mean output length of the measured requests

    def describe(self) -> str:
        return (
            f"ML.ENERGY {self.model_id} {self.task}: {len(self.batch)} points, batch "
            f"{self.batch.min():.0f}-{self.batch.max():.0f}"
        )


def find_measured(
    rows: Sequence[MeasuredRow], model_name: str, gpu: str, precision: str, tensor_parallel: int
) -> MeasuredCurve | None:
    """The measured curve matching the model (by name), GPU, precision and TP on exactly TP GPUs, if any."""
    want = _short_name(model_name)
    spec = get_precision(precision).name
    matching = [
        r
        for r in rows
        if (_short_name(r.model_id) == want or _short_name(r.model_id).startswith(want + "-"))
        and r.gpu_model.upper() == gpu.upper()
        and r.precision == spec
        and r.tp == tensor_parallel
        and r.num_gpus == tensor_parallel
        and r.avg_batch_size
        and r.output_tok_per_s
        and r.avg_power_watts
    ]
    if not matching:
        return None
    tasks = {r.task for r in matching}
    task = next((t for t in _TASK_PREFERENCE if t in tasks), sorted(tasks)[0])
    model_ids = sorted({r.model_id for r in matching if r.task == task})
    chosen = sorted(
        (r for r in matching if r.task == task and r.model_id == model_ids[0]), key=lambda r: r.avg_batch_size or 0
    )
    batch = np.array([r.avg_batch_size for r in chosen], dtype=float)
    step = batch / np.array([r.output_tok_per_s for r in chosen], dtype=float)
    watts = np.array([r.avg_power_watts for r in chosen], dtype=float)
    out = float(np.mean([r.avg_output_len for r in chosen]))
    return MeasuredCurve(model_ids[0], task, batch, step, watts, out)


def _interp_clamped(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1])
    i = bisect.bisect_right(xs, x) - 1
    w = (x - xs[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + w * (ys[i + 1] - ys[i]))


class GroundTruthTiming:
    """`wattkeeper_runtime.timing.StepTiming` of one replica, from a precomputed table (see module doc).

    The engine asks for a step's duration and then for its power in two calls; power depends on the prefill
    tokens riding in the step, which the power call does not pass, so the power of the step just timed is kept.
    """

    def __init__(
        self,
        seconds: FloatArray,
        watts: FloatArray,
        idle_watts: float,
        kv_cache_tokens: int,
        batch_nodes: Sequence[int] = _BATCH_NODES,
        context_nodes: Sequence[int] = _CONTEXT_NODES,
        prompt_nodes: Sequence[int] = _PROMPT_NODES,
    ) -> None:
        self._seconds = seconds.tolist()  # nested lists: indexing them beats numpy scalars in a hot loop
        self._watts = watts.tolist()
        self._b = list(batch_nodes)
        self._c = list(context_nodes)
        self._p = list(prompt_nodes)
        self._idle_watts = idle_watts
        self._kv_tokens = kv_cache_tokens
        self._last_watts: float | None = None

    @staticmethod
    def _locate(nodes: list[int], x: float) -> tuple[int, float]:
        if x <= nodes[0]:
            return 0, 0.0
        if x >= nodes[-1]:
            return len(nodes) - 2, 1.0
        i = bisect.bisect_right(nodes, x) - 1
        return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])

    def _lookup(self, batch: float, context: float, prompt: float) -> tuple[float, float]:
        bi, bw = self._locate(self._b, batch)
        ci, cw = self._locate(self._c, context)
        pi, pw = self._locate(self._p, prompt)
        out = []
        for table in (self._seconds, self._watts):
            acc = 0.0
            for db, wb in ((0, 1.0 - bw), (1, bw)):
                if wb == 0.0:
                    continue
                plane = table[bi + db]
                for dc, wc in ((0, 1.0 - cw), (1, cw)):
                    if wc == 0.0:
                        continue
                    row = plane[ci + dc]
                    acc += wb * wc * (row[pi] * (1.0 - pw) + row[pi + 1] * pw)
            out.append(acc)
        return out[0], out[1]

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        seconds, watts = self._lookup(batch_size, context_tokens, prompt_tokens)
        self._last_watts = watts
        return seconds

    def prefill_seconds(self, prompt_tokens: int) -> float:
        seconds, watts = self._lookup(0, self._c[0], prompt_tokens)
        self._last_watts = watts
        return seconds

    def power_watts(self, batch_size: int, busy_fraction: float, context_tokens: int = 1024) -> float:
        if batch_size <= 0 or busy_fraction <= 0:
            return self._idle_watts
        if self._last_watts is not None:
            watts, self._last_watts = self._last_watts, None
        else:
            watts = self._lookup(batch_size, context_tokens, 0)[1]
        return busy_fraction * watts + (1.0 - busy_fraction) * self._idle_watts

    def kv_cache_tokens(self) -> int:
        return self._kv_tokens


@dataclass
class GroundTruth:
    """Step timing and power of replicas of one model on one GPU type, per configuration (cached)."""

    model: ModelShape
    accelerator: Accelerator
    energy_model: EnergyModel
    measured_rows: Sequence[MeasuredRow] = ()
    _timings: dict[ServingConfig, GroundTruthTiming] = field(default_factory=dict)
    _curves: dict[tuple[str, int], MeasuredCurve | None] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        model: ModelShape,
        gpu: str,
        energy_model: EnergyModel | None = None,
        mlenergy_path: Path | None = None,
        use_measured: bool = True,
    ) -> GroundTruth:
        path = mlenergy_path or mlenergy_csv()
        rows = read_mlenergy(path) if (use_measured and path is not None and path.is_file()) else []
        return cls(model, get_accelerator(gpu), energy_model or EnergyModel.default(), rows)

    def curve(self, config: ServingConfig) -> MeasuredCurve | None:
        if config.gpu_power_limit_watts is not None or config.kv_cache_dtype:
            return None  # ML.ENERGY ran at the default power limit and KV dtype
        key = (get_precision(config.precision).name, config.tensor_parallel)
        if key not in self._curves:
            self._curves[key] = find_measured(
                self.measured_rows, self.model.name, self.accelerator.name, key[0], key[1]
            )
        return self._curves[key]

    def source(self, config: ServingConfig) -> str:
        curve = self.curve(config)
        return f"measured ({curve.describe()})" if curve is not None else "model (no measured configuration)"

    def idle_watts(self, config: ServingConfig) -> float:
        return self.accelerator.idle_watts * config.tensor_parallel

    def _model_steps(
        self, config: ServingConfig, batch: FloatArray, context: FloatArray, prompt: FloatArray, length: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Vectorised model step time and replica watts (the evaluator the planner itself uses)."""
        em = self.energy_model
        base = em.features(self.model, self.accelerator, config)
        f = base.take(np.zeros(batch.size, dtype=np.int64))
        s = em.evaluator.step(f, batch, context, prompt, length)
        return np.asarray(s.step_seconds, dtype=float), np.asarray(s.watts_per_gpu * f.gpus, dtype=float)

    def corrections(self, config: ServingConfig) -> tuple[list[float], list[float], list[float]] | None:
        """(log batch, step-time ratio, power ratio) measured/model at the measured points, or None."""
        curve = self.curve(config)
        if curve is None:
            return None
        task_param = TASK_INPUT_PARAMETER.get(curve.task)
        inp = float(self.energy_model.coefficients[task_param]) if task_param else 512.0
        out = curve.output_tokens
        n = curve.batch.size
        seconds, watts = self._model_steps(
            config,
            curve.batch,
            np.full(n, inp + 0.5 * out),
            curve.batch * inp / out,
            np.full(n, inp),
        )
        return (
            np.log(curve.batch).tolist(),
            (curve.step_seconds / seconds).tolist(),
            (curve.watts / watts).tolist(),
        )

    def timing(self, config: ServingConfig) -> GroundTruthTiming:
        cached = self._timings.get(config)
        if cached is not None:
            return cached
        b = np.asarray(_BATCH_NODES, dtype=float)
        c = np.asarray(_CONTEXT_NODES, dtype=float)
        p = np.asarray(_PROMPT_NODES, dtype=float)
        bb, cc, pp = np.meshgrid(b, c, p, indexing="ij")
        seconds, watts = self._model_steps(config, bb.ravel(), cc.ravel(), pp.ravel(), np.maximum(pp.ravel(), 1.0))
        seconds = seconds.reshape(bb.shape)
        watts = watts.reshape(bb.shape)
        ratios = self.corrections(config)
        if ratios is not None:
            logs, rt, rp = ratios
            for i, batch in enumerate(_BATCH_NODES):
                x = math.log(max(batch, 1))
                seconds[i] *= _interp_clamped(x, logs, rt)
                watts[i] *= _interp_clamped(x, logs, rp)
        idle = self.idle_watts(config)
        watts = np.maximum(watts, idle)  # a corrected busy step never draws less than idle
        kv = int(self.energy_model.kv_cache_capacity_tokens(self.model, self.accelerator, config))
        timing = GroundTruthTiming(seconds, watts, idle, kv)
        self._timings[config] = timing
        return timing
