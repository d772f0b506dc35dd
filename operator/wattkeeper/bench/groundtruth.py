"""Ground truth for the fleet simulator: what one replica's engine step costs in time and power.

The planner never sees this: policies get the `EnergyModel`; the fleet's engines get a `GroundTruthTiming` made
here, which differs from the model in three ways that the model cannot know.

1. Where ML.ENERGY measured the (model, GPU, precision, TP) being simulated, the measured steady states decide the
   decode part of a step: at each measured batch the measured step time (batch / output tokens per second) and
   power are divided by the calibrated model's figures under the same conditions, and those ratios, interpolated
   in log(batch) and held flat beyond the measured range, scale the model's decode-only time (`decode_only_seconds`
   of `Evaluator.step`) and its power. They are never stretched over the prefill part of a step or over
   prefill-only steps (batch 0): the measurements say nothing about those, which get the hidden prefill bias.
2. Elsewhere the calibrated model is multiplied by hidden, seeded log-normal biases, drawn per precision x TP x
   batch regime (decode batch 1-16, 17-128, over 128; log-interpolated between the regimes so a step time never
   jumps), one for the prefill part per precision x TP, and one for power. Their sigmas are the calibration's own
   in-sample p90 error read as a log-normal tail (`hidden_sigmas`): ln(1 + p90 APE) / 1.645, which gives 0.27 on
   step time (output tokens/s p90 APE 55%) and 0.17 on power (p90 APE 32%) with today's coefficients. A GPU power
   limit's slow-down gets its own hidden bias (sigma `LIMIT_SIGMA`). Same seed, same truth; no seed, no bias.
3. fp8 prefill as the measured pairs show it (`fp8_prefill_factor`): the prefill part of an fp8 step is the
   model's times the measured fp8/bf16 step-time ratio over the model's ratio, the median over ML.ENERGY's
   matched prefill-heavy pairs (see that function).

The model still supplies how a step varies with its context length and the prefill tokens riding in it. Model
evaluations go through the energy model's vectorised evaluator once per configuration, into a table over (decode
batch, context, prefill tokens) that a step looks up by trilinear interpolation: a replay asks millions of
questions, and one scalar model call costs ~0.1 ms. `GroundTruth.source()` says what decided each configuration.
"""

from __future__ import annotations

import bisect
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..energy.catalog import Accelerator, get_accelerator, get_precision, model_from_name
from ..energy.datasets import MeasuredRow, mlenergy_csv, read_mlenergy
from ..energy.grid import StepGrid, Table
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
        self._seconds: Table = seconds.tolist()  # nested lists: indexing them beats numpy scalars in a hot loop
        self._watts: Table = watts.tolist()
        self._grid = StepGrid(batch_nodes, context_nodes, prompt_nodes)
        self._idle_watts = idle_watts
        self._kv_tokens = kv_cache_tokens
        self._last_watts: float | None = None

    def _lookup(self, batch: float, context: float, prompt: float) -> tuple[float, float]:
        at = self._grid.position(batch, context, prompt)
        return self._grid.read(self._seconds, at), self._grid.read(self._watts, at)

    def decode_step_seconds(self, batch_size: int, context_tokens: int, prompt_tokens: int = 0) -> float:
        seconds, watts = self._lookup(batch_size, context_tokens, prompt_tokens)
        self._last_watts = watts
        return seconds

    def prefill_seconds(self, prompt_tokens: int) -> float:
        seconds, watts = self._lookup(0, self._grid.context_nodes[0], prompt_tokens)
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


# Decode-batch regimes of the hidden step-time bias: one draw at each node, log-interpolated between them.
_REGIME_BATCHES = (4.0, 48.0, 384.0)
# The published power-limit effect the model reproduces is one pair of figures (energy/powerlimit.py), and the
# previous prior of the exponent gave twice the slow-down: a factor of 2 at the p90, ln 2 / 1.645.
LIMIT_SIGMA = 0.42
# Fallbacks when the coefficients carry no in-sample errors: today's figures (tokens/s p90 55%, power p90 32%).
_DEFAULT_P90_APE = {"output_tok_per_s": 55.08, "avg_power_watts": 31.97}
# ML.ENERGY's matched fp8/bf16 pairs where prefill is a visible share of the step: the same base model, task, GPU,
# TP and max-num-seqs (configurations.csv lines 225-233 fp8 against 235-243 bf16: Qwen3-Coder-480B-A35B,
# sourcegraph-fim, 8 x B200, TP8, max-num-seqs 8-1024). The H100 pairs (Qwen3-235B-A22B-Thinking gpqa, lines
# 81-83 against 102-104) have ~9,000-token outputs and ~no prefill in their steps, so they say nothing of it.
FP8_PREFILL_PAIRS = ("Qwen/Qwen3-Coder-480B-A35B-Instruct", "sourcegraph-fim", "B200")


def hidden_sigmas(energy_model: EnergyModel) -> tuple[float, float]:
    """(step-time sigma, power sigma) of the hidden biases: the calibration's p90 error as a log-normal tail."""
    in_sample = energy_model.coefficients.metadata.get("in_sample", {}) if energy_model.coefficients.metadata else {}

    def sigma(metric: str) -> float:
        p90 = float(in_sample.get(metric, {}).get("p90_ape_percent", _DEFAULT_P90_APE[metric]))
        return math.log(1.0 + p90 / 100.0) / 1.645

    return sigma("output_tok_per_s"), sigma("avg_power_watts")


def fp8_prefill_factor(rows: Sequence[MeasuredRow], energy_model: EnergyModel) -> float | None:
    """Measured fp8/bf16 step time over the model's fp8/bf16 step time, median over the matched pairs.

    In those steps prefill is what the two precisions do differently (sourcegraph-fim prompts are ~2,400 tokens
    for ~250 output tokens), so the ratio is read as fp8 prefill's error and applied to the prefill part of fp8
    steps only. With today's data and coefficients: 3.87 (per pair 2.72-5.37). None when the pairs are absent.
    """
    model_id, task, gpu = FP8_PREFILL_PAIRS
    pairs: dict[int, dict[str, MeasuredRow]] = {}
    for r in rows:
        same = r.model_id.removesuffix("-FP8") == model_id and r.task == task and r.gpu_model.upper() == gpu
        if same and r.avg_batch_size and r.output_tok_per_s:
            pairs.setdefault(r.max_num_seqs, {})[r.precision] = r
    task_param = TASK_INPUT_PARAMETER.get(task)
    inp = float(energy_model.coefficients[task_param]) if task_param else 512.0
    ratios = []
    for both in pairs.values():
        if "fp8" not in both or "bf16" not in both:
            continue
        measured, modelled = [], []
        for precision in ("bf16", "fp8"):
            r = both[precision]
            shape = model_from_name(r.model_id, r.total_params_b, r.active_params_b, r.architecture)
            config = ServingConfig(r.precision, r.tp, r.max_num_seqs)
            f = energy_model.features(shape, get_accelerator(r.gpu_model), config).take(np.zeros(1, dtype=np.int64))
            batch = np.array([float(r.avg_batch_size or 1.0)])
            out = max(r.avg_output_len, 1.0)
            s = energy_model.evaluator.step(f, batch, np.array([inp + 0.5 * out]), batch * inp / out, np.array([inp]))
            measured.append(float(batch[0]) / float(r.output_tok_per_s or 1.0))
            modelled.append(float(s.step_seconds[0]))
        ratios.append((measured[1] / measured[0]) / (modelled[1] / modelled[0]))
    return float(np.median(ratios)) if ratios else None


def _unit_normal(seed: int, *key: object) -> float:
    """A standard normal draw fixed by the seed and the key (stable across runs and call orders)."""
    digest = zlib.crc32(repr(key).encode())
    return float(np.random.default_rng([seed, digest]).standard_normal())


@dataclass(frozen=True)
class HiddenBias:
    """The seeded factors of one (precision, TP): decode time per regime, prefill time, power per regime, limit."""

    decode: tuple[float, ...]
    prefill: float
    power: tuple[float, ...]
    limit: float

    @classmethod
    def draw(cls, seed: int, precision: str, tensor_parallel: int, sigma_time: float, sigma_power: float) -> HiddenBias:
        key = (precision, tensor_parallel)
        return cls(
            decode=tuple(math.exp(sigma_time * _unit_normal(seed, "decode", key, b)) for b in _REGIME_BATCHES),
            prefill=math.exp(sigma_time * _unit_normal(seed, "prefill", key)),
            power=tuple(math.exp(sigma_power * _unit_normal(seed, "power", key, b)) for b in _REGIME_BATCHES),
            limit=math.exp(LIMIT_SIGMA * _unit_normal(seed, "limit", key)),
        )

    def at(self, factors: tuple[float, ...], batch: float) -> float:
        logs = [math.log(b) for b in _REGIME_BATCHES]
        return math.exp(_interp_clamped(math.log(max(batch, 1.0)), logs, [math.log(x) for x in factors]))


@dataclass
class GroundTruth:
    """Step timing and power of replicas of one model on one GPU type, per configuration (cached).

    `seed` None: the calibrated model (with the measured decode corrections where rows are given), as the latency
    checks want it; an int: the hidden biases of that seed and the measured fp8 prefill, as the benchmark wants it.
    """

    model: ModelShape
    accelerator: Accelerator
    energy_model: EnergyModel
    measured_rows: Sequence[MeasuredRow] = ()
    seed: int | None = None
    fp8_prefill: float = 1.0  # factor on the prefill part of fp8 steps (fp8_prefill_factor)
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
        seed: int | None = None,
    ) -> GroundTruth:
        em = energy_model or EnergyModel.default()
        path = mlenergy_path or mlenergy_csv()
        rows = read_mlenergy(path) if (use_measured and path is not None and path.is_file()) else []
        fp8 = fp8_prefill_factor(rows, em) if (rows and seed is not None) else None
        return cls(model, get_accelerator(gpu), em, rows, seed, fp8 or 1.0)

    def curve(self, config: ServingConfig) -> MeasuredCurve | None:
        if config.kv_cache_dtype:
            return None  # ML.ENERGY ran at the default KV dtype
        key = (get_precision(config.precision).name, config.tensor_parallel)
        if key not in self._curves:
            self._curves[key] = find_measured(
                self.measured_rows, self.model.name, self.accelerator.name, key[0], key[1]
            )
        return self._curves[key]

    def bias(self, config: ServingConfig) -> HiddenBias | None:
        if self.seed is None:
            return None
        sigma_time, sigma_power = hidden_sigmas(self.energy_model)
        return HiddenBias.draw(
            self.seed, get_precision(config.precision).name, config.tensor_parallel, sigma_time, sigma_power
        )

    def source(self, config: ServingConfig) -> str:
        curve = self.curve(config)
        parts = [f"measured decode ({curve.describe()})" if curve is not None else "model"]
        if self.seed is not None:
            parts.append(f"hidden bias seed {self.seed}" + (" on prefill" if curve is not None else ""))
        if self.fp8_prefill != 1.0 and get_precision(config.precision).name == "fp8":
            parts.append(f"fp8 prefill x{self.fp8_prefill:.2f} (measured pairs)")
        if config.gpu_power_limit_watts is not None and self.seed is not None:
            parts.append("hidden limit bias")
        return ", ".join(parts)

    def idle_watts(self, config: ServingConfig) -> float:
        return self.accelerator.idle_watts * config.tensor_parallel

    def _model_steps(
        self, config: ServingConfig, batch: FloatArray, context: FloatArray, prompt: FloatArray, length: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Vectorised model step time, its decode-only part and replica watts (the planner's own evaluator)."""
        em = self.energy_model
        base = em.features(self.model, self.accelerator, config)
        f = base.take(np.zeros(batch.size, dtype=np.int64))
        s = em.evaluator.step(f, batch, context, prompt, length)
        return (
            np.asarray(s.step_seconds, dtype=float),
            np.asarray(s.decode_only_seconds, dtype=float),
            np.asarray(s.watts_per_gpu * f.gpus, dtype=float),
        )

    def corrections(self, config: ServingConfig) -> tuple[list[float], list[float], list[float]] | None:
        """(log batch, step-time ratio, power ratio) measured/model at the measured points, or None."""
        curve = self.curve(config)
        if curve is None:
            return None
        unlimited = replace(config, gpu_power_limit_watts=None)  # ML.ENERGY ran at the default limit
        task_param = TASK_INPUT_PARAMETER.get(curve.task)
        inp = float(self.energy_model.coefficients[task_param]) if task_param else 512.0
        out = curve.output_tokens
        n = curve.batch.size
        seconds, _, watts = self._model_steps(
            unlimited,
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

    def _table(self, config: ServingConfig) -> tuple[FloatArray, FloatArray]:
        """(seconds, watts) over the table nodes for `config` at the default power limit, truth applied."""
        b = np.asarray(_BATCH_NODES, dtype=float)
        c = np.asarray(_CONTEXT_NODES, dtype=float)
        p = np.asarray(_PROMPT_NODES, dtype=float)
        bb, cc, pp = np.meshgrid(b, c, p, indexing="ij")
        seconds, decode, watts = self._model_steps(
            config, bb.ravel(), cc.ravel(), pp.ravel(), np.maximum(pp.ravel(), 1.0)
        )
        seconds, decode, watts = (x.reshape(bb.shape) for x in (seconds, decode, watts))
        prefill = seconds - decode
        bias = self.bias(config)
        ratios = self.corrections(config)
        fp8 = self.fp8_prefill if get_precision(config.precision).name == "fp8" else 1.0
        for i, batch in enumerate(_BATCH_NODES):
            if batch == 0:
                # A prefill-only step: nothing measured says anything of it (the old correction, indexed by decode
                # batch, used to scale these by the batch-8 ratio: a hidden speed-up).
                time_factor, prefill_factor = (bias.prefill if bias else 1.0), (bias.prefill if bias else 1.0)
                power_factor = bias.at(bias.power, 1.0) if bias else 1.0
            elif ratios is not None:
                x = math.log(batch)
                time_factor = _interp_clamped(x, ratios[0], ratios[1])
                power_factor = _interp_clamped(x, ratios[0], ratios[2])
                prefill_factor = bias.prefill if bias else 1.0
            else:
                time_factor = bias.at(bias.decode, batch) if bias else 1.0
                power_factor = bias.at(bias.power, batch) if bias else 1.0
                prefill_factor = bias.prefill if bias else 1.0
            seconds[i] = decode[i] * time_factor + prefill[i] * prefill_factor * fp8
            watts[i] *= power_factor
        return seconds, watts

    def timing(self, config: ServingConfig) -> GroundTruthTiming:
        cached = self._timings.get(config)
        if cached is not None:
            return cached
        unlimited = replace(config, gpu_power_limit_watts=None)
        seconds, watts = self._table(unlimited)
        if config.gpu_power_limit_watts is not None:
            # The limit's effect is the model's (energy/powerlimit.py), its slow-down scaled by a hidden factor;
            # the power is clipped to the limit on every GPU, as the card's controller does.
            b, c, p = (np.asarray(n, dtype=float) for n in (_BATCH_NODES, _CONTEXT_NODES, _PROMPT_NODES))
            bb, cc, pp = np.meshgrid(b, c, p, indexing="ij")
            args = (bb.ravel(), cc.ravel(), pp.ravel(), np.maximum(pp.ravel(), 1.0))
            free, _, _ = self._model_steps(unlimited, *args)
            limited, _, _ = self._model_steps(config, *args)
            slow = (limited / np.maximum(free, 1e-12)).reshape(bb.shape)
            bias = self.bias(config)
            seconds = seconds * (1.0 + (bias.limit if bias else 1.0) * (slow - 1.0))
            watts = np.minimum(watts, config.gpu_power_limit_watts * config.tensor_parallel)
        idle = self.idle_watts(config)
        # A busy step never draws less than idle, nor more than the cards' default limits (a biased model can).
        watts = np.clip(watts, idle, self.accelerator.power_limit_watts * config.tensor_parallel)
        kv = int(self.energy_model.kv_cache_capacity_tokens(self.model, self.accelerator, config))
        timing = GroundTruthTiming(seconds, watts, idle, kv)
        self._timings[config] = timing
        return timing
