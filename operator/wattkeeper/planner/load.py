"""The load to plan for, from what telemetry shows: short-window bursts, token distributions and a trend.

Real arrivals burst at about three times a minute's mean within ten seconds (the Azure conversation trace), so a
plan sized for the minute's mean, taken as Poisson, queues in every burst. `estimate_load` therefore plans for
the 95th percentile of the 10-second rates over the recent history (from arrival counts at fine resolution, e.g.
the rate of vLLM's `vllm:request_success_total` or the router's counter every second or few), raised by the rise
a linear trend over the last minutes predicts one model-load time ahead (a new replica takes that long to serve).
The prompt and output lengths are kept as distributions (`TokenDistribution`), not only means: the latency model
needs the long prompts that queue the prefill stream and the short outputs whose mean ITL one long step lifts.

Everything here is pure: counts in, an estimate out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..energy.latency import TokenDistribution

FloatArray = npt.NDArray[np.float64]

BURST_WINDOW_SECONDS = 10.0
BURST_QUANTILE = 0.95
HISTORY_SECONDS = 600.0
TREND_SECONDS = 300.0
LEVEL_SECONDS = 120.0
# Windows of the centred moving mean that separates grouping (faster) from level swings (slower): ~70 s.
DETREND_WINDOWS = 7
# Fewer observed requests than this: the token distribution is too thin to trust; callers fall back to means.
MIN_TOKEN_SAMPLE = 20


@dataclass(frozen=True)
class LoadEstimate:
    """What to plan for, and the figures it came from (requests per second)."""

    requests_per_second: float  # plan for this: burst rate plus the forecast rise
    mean_rate: float  # over the history
    recent_rate: float  # over the last burst window
    level_rate: float  # over the last LEVEL_SECONDS: where the rate stands now, bursts averaged out
    burst_rate: float  # the burst quantile of the window rates
    trend_per_second: float  # slope of the rate (requests/s per second), over the trend span
    forecast_rise: float  # what the trend adds one lead time ahead (>= 0: a fall is not planned for early)
    lead_seconds: float
    # Bursts as (factor on the mean rate, share of time) pairs from the window rates (for the latency model).
    rate_levels: tuple[tuple[float, float], ...]
    # Clustering: variance over mean of the burst-window counts (1 for Poisson; see `arrival_dispersion`). The
    # latency model treats it as arrivals in groups (M^X/G/1), which the rate levels then no longer repeat.
    arrival_dispersion: float
    tokens: TokenDistribution | None  # None when too few lengths were observed
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None

    @property
    def queued_rate(self) -> float:
        """The mean rate to give the queued latency model with `arrival_dispersion` (which carries the bursts):
        the current level or the history's mean, whichever is higher, plus the forecast rise."""
        return max(self.level_rate, self.mean_rate) + self.forecast_rise

    @property
    def growth_factor(self) -> float:
        """Forecast over current mean rate: how much faster recent arrivals should be replayed (>= 1)."""
        if self.mean_rate <= 0:
            return 1.0
        return max(1.0, (self.mean_rate + self.forecast_rise) / self.mean_rate)

    def describe(self) -> str:
        return (
            f"{self.requests_per_second:.2f} req/s planned (mean {self.mean_rate:.2f}, p{BURST_QUANTILE * 100:.0f} "
            f"of {BURST_WINDOW_SECONDS:.0f}-s rates {self.burst_rate:.2f}, trend +{self.forecast_rise:.2f} in "
            f"{self.lead_seconds:.0f} s)"
        )


@dataclass(frozen=True)
class ArrivalSample:
    """Recent requests as seen by the router or the engines: arrival offsets (s, sorted) and token lengths."""

    arrival_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.arrival_s) == len(self.prompt_tokens) == len(self.output_tokens)):
            raise ValueError("arrival sample arrays differ in length")
        if any(b < a for a, b in zip(self.arrival_s, self.arrival_s[1:], strict=False)):
            raise ValueError("arrival times must be sorted")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return self.arrival_s[-1] - self.arrival_s[0] if self.arrival_s else 0.0

    @classmethod
    def from_arrays(
        cls, arrival_s: npt.ArrayLike, prompt_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike
    ) -> ArrivalSample:
        order = np.argsort(np.asarray(arrival_s, dtype=float), kind="stable")
        a = np.asarray(arrival_s, dtype=float)[order]
        p = np.asarray(prompt_tokens, dtype=np.int64)[order]
        o = np.asarray(output_tokens, dtype=np.int64)[order]
        return cls(tuple(float(x) for x in a), tuple(int(x) for x in p), tuple(int(x) for x in o))


def counts_on_grid(timestamps_s: Sequence[float], totals: Sequence[float], end_s: float, resolution_s: float,
                   bins: int) -> FloatArray:
    """Increases of a cumulative counter per bin of the grid of `bins` bins of `resolution_s` ending at `end_s`.

    As PromQL's increase: a drop is a reset (the new value is the increase since it), nothing is extrapolated
    beyond the first and last samples. The increase between two samples is spread over the time between them
    evenly, so a bin gets it in proportion to its overlap: the cumulative increase is piecewise linear through the
    samples, and a bin's count is its rise across the bin."""
    if resolution_s <= 0 or bins < 1:
        raise ValueError("resolution must be > 0 and bins >= 1")
    t = np.asarray(timestamps_s, dtype=float)
    v = np.asarray(totals, dtype=float)
    if t.size != v.size:
        raise ValueError("timestamps and totals differ in length")
    if t.size < 2:
        return np.zeros(bins)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    step = np.diff(v)
    step = np.where(step < 0, v[1:], step)  # a reset: counted from zero
    cumulative = np.concatenate(([0.0], np.cumsum(step)))
    edges = end_s - resolution_s * np.arange(bins, -1, -1, dtype=float)
    # np.interp holds the end values outside the samples: no increase before the first or after the last.
    return np.maximum(np.diff(np.interp(edges, t, cumulative)), 0.0)


def counts_from_counter(
    timestamps_s: Sequence[float], totals: Sequence[float], resolution_s: float
) -> FloatArray:
    """Arrivals per `resolution_s` bin from samples of a cumulative counter, on the grid that starts at the first
    sample (`counts_on_grid`: resets tolerated, an interval's increase spread over the bins it spans)."""
    if resolution_s <= 0:
        raise ValueError("resolution must be > 0")
    t = np.asarray(timestamps_s, dtype=float)
    if t.size != np.asarray(totals).size:
        raise ValueError("timestamps and totals differ in length")
    if t.size < 2:
        return np.zeros(0)
    if np.any(np.diff(t) <= 0):
        raise ValueError("counter timestamps must increase")
    bins = max(1, math.ceil((t[-1] - t[0]) / resolution_s - 1e-9))
    return counts_on_grid(timestamps_s, totals, float(t[0]) + bins * resolution_s, resolution_s, bins)


# How many lengths a histogram is expanded into (`sample_from_histogram`): enough for the latency model's
# quantile groups (energy/latency.py DISTRIBUTION_EDGES), few enough to keep a tick cheap.
HISTOGRAM_SAMPLE_SIZE = 200


def sample_from_histogram(
    upper_bounds: Sequence[float], cumulative_counts: Sequence[float], size: int = HISTOGRAM_SAMPLE_SIZE
) -> tuple[float, ...]:
    """`size` values spread over a Prometheus histogram's distribution: its quantiles at (i + 0.5) / size, each
    interpolated linearly within its bucket as PromQL's histogram_quantile does (the first bucket from 0; the
    +Inf bucket at the largest finite bound). `upper_bounds` are the `le` labels in rising order (+Inf allowed),
    `cumulative_counts` the bucket counts (cumulative, as exposed; e.g. their increase over a window). () when the
    histogram counted nothing."""
    bounds = np.asarray(upper_bounds, dtype=float)
    cum = np.asarray(cumulative_counts, dtype=float)
    if bounds.size != cum.size:
        raise ValueError("histogram bounds and counts differ in length")
    if size < 1 or bounds.size == 0:
        return ()
    order = np.argsort(bounds, kind="stable")
    bounds, cum = bounds[order], np.maximum.accumulate(np.maximum(cum[order], 0.0))
    total = float(cum[-1])
    if total <= 0:
        return ()
    finite = bounds[np.isfinite(bounds)]
    top = float(finite[-1]) if finite.size else 0.0
    bounds = np.where(np.isfinite(bounds), bounds, top)
    lower = np.concatenate(([0.0], bounds[:-1]))
    below = np.concatenate(([0.0], cum[:-1]))
    ranks = (np.arange(size) + 0.5) / size * total
    i = np.minimum(np.searchsorted(cum, ranks, side="left"), cum.size - 1)
    inside = cum[i] - below[i]
    share = np.where(inside > 0, (ranks - below[i]) / np.where(inside > 0, inside, 1.0), 1.0)
    return tuple(float(v) for v in lower[i] + (bounds[i] - lower[i]) * np.clip(share, 0.0, 1.0))


# A synthesised replay sample keeps at most the last this many seconds of arrivals: the replay judges the most
# recent requests only (verify.py MAX_REPLAY_REQUESTS_PER_REPLICA), and a shorter sample hashes and replays faster.
SYNTHESISED_SAMPLE_SECONDS = 300.0


def synthesised_sample(counts: Sequence[float], resolution_s: float, prompt_tokens: Sequence[float],
                       output_tokens: Sequence[float],
                       max_seconds: float = SYNTHESISED_SAMPLE_SECONDS) -> ArrivalSample | None:
    """Recent arrivals for a replay, synthesised from what telemetry keeps: requests per `resolution_s` bin
    (`counts`, oldest first) and token-length samples (prompt and output, paired by position). None when either
    is empty or nothing arrived.

    Pure and deterministic: a bin's fractional counts are rounded on the running total (so whole bins keep their
    sum, and the total is preserved to within one request), and each bin's requests are spread at evenly spaced
    instants within it. Even spreading within a bin keeps the bursts the replay exists to see: with 15-s bins a
    10-s burst stays a bin at its own rate, where spreading a minute evenly would average it away. Requests are
    paired with the token samples in a fixed order (the i-th request takes pair i modulo the sample size: the
    histogram-expanded samples are already in a seeded pseudo-random order, see `token_sample_from_histograms`)."""
    n_tokens = min(len(prompt_tokens), len(output_tokens))
    if resolution_s <= 0 or not counts or n_tokens == 0:
        return None
    keep = max(1, int(max_seconds // resolution_s))
    recent = [max(float(c), 0.0) for c in counts[-keep:]]
    arrivals: list[float] = []
    done = 0
    running = 0.0
    for b, c in enumerate(recent):
        running += c
        k = math.floor(running + 0.5) - done
        done += k
        start = b * resolution_s
        arrivals.extend(start + (i + 0.5) * resolution_s / k for i in range(k))
    if not arrivals:
        return None
    prompts = tuple(max(1, round(float(prompt_tokens[i % n_tokens]))) for i in range(len(arrivals)))
    outputs = tuple(max(1, round(float(output_tokens[i % n_tokens]))) for i in range(len(arrivals)))
    return ArrivalSample(tuple(arrivals), prompts, outputs)


def token_sample_from_histograms(
    prompt: tuple[Sequence[float], Sequence[float]],
    output: tuple[Sequence[float], Sequence[float]],
    size: int = HISTOGRAM_SAMPLE_SIZE,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Prompt and output lengths as a paired sample from vLLM's two histograms (`vllm:request_prompt_tokens`,
    `vllm:request_generation_tokens`; each (upper bounds, cumulative counts)). The histograms keep no pairing, so
    the output values are put in a fixed pseudo-random order (seeded, so a tick stays a pure function): lengths
    taken as independent rather than as perfectly correlated, which sorted quantiles side by side would say."""
    prompts = sample_from_histogram(*prompt, size=size)
    outputs = sample_from_histogram(*output, size=size)
    if not prompts or not outputs:
        return (), ()
    order = np.random.default_rng(11).permutation(len(outputs))
    return prompts, tuple(outputs[int(k)] for k in order)


def window_rates(counts: npt.ArrayLike, resolution_s: float, window_s: float = BURST_WINDOW_SECONDS) -> FloatArray:
    """Rates over every window of `window_s` that slides one bin at a time (requests per second)."""
    c = np.asarray(counts, dtype=float)
    width = max(1, round(window_s / resolution_s))
    if c.size == 0:
        return np.zeros(0)
    if c.size <= width:
        return np.array([c.sum() / (c.size * resolution_s)])
    cum = np.concatenate(([0.0], np.cumsum(c)))
    return (cum[width:] - cum[:-width]) / (width * resolution_s)


def rate_levels(
    counts: npt.ArrayLike,
    resolution_s: float,
    window_s: float = BURST_WINDOW_SECONDS,
    levels: int = 3,
    dispersion: float = 1.0,
) -> tuple[tuple[float, float], ...]:
    """The rates of consecutive `window_s` windows as `levels` equal-time groups, busiest last: (mean rate of the
    group over the overall mean, share of time). ((1.0, 1.0),) when there is nothing to group.

    Window counts vary by chance too: a Poisson stream's by its mean, a clustered one's by `dispersion` times
    that. The latency model adds that randomness itself, so the levels keep only the variance beyond it: each
    factor is shrunk toward 1 by sqrt(1 - chance variance / observed variance).
    """
    c = np.asarray(counts, dtype=float)
    width = max(1, round(window_s / resolution_s))
    usable = (c.size // width) * width
    if usable < width * levels or c.sum() <= 0:
        return ((1.0, 1.0),)
    per_window = np.sort(c[-usable:].reshape(-1, width).sum(axis=1))
    mean = per_window.mean()
    if mean <= 0:
        return ((1.0, 1.0),)
    observed = float(per_window.var())
    chance = max(dispersion, 1.0) * mean
    shrink = math.sqrt(max(0.0, 1.0 - chance / observed)) if observed > 0 else 0.0
    groups = np.array_split(per_window, levels)
    out = tuple((float(1.0 + (g.mean() / mean - 1.0) * shrink), float(g.size / per_window.size)) for g in groups)
    return out if shrink > 0 else ((1.0, 1.0),)


def thinned_dispersion(dispersion: float, share: npt.ArrayLike) -> FloatArray:
    """The index of dispersion of a random `share` of a clustered stream of index `dispersion`: each member of a
    group of X goes there on its own with probability p, so the share sees groups of Binomial(X, p), whose
    E[Y^2]/E[Y] is 1 + p (D - 1). A replica's part of a service's stream where the router picks per request
    (a Kubernetes Service's random pick; least-outstanding routing, as the benchmark's and vLLM's router do,
    splits a group more evenly still, so this is the cautious side): share 1 / replicas."""
    return 1.0 + np.asarray(share, dtype=float) * (max(dispersion, 1.0) - 1.0)


def arrival_dispersion(
    counts: npt.ArrayLike,
    resolution_s: float,
    window_s: float = BURST_WINDOW_SECONDS,
    detrend_windows: int = DETREND_WINDOWS,
) -> float:
    """Index of dispersion (variance over mean) of the arrival counts of consecutive `window_s` windows around
    their local level (a centred moving mean over `detrend_windows` windows): 1 for a Poisson stream, about
    E[X^2]/E[X] for requests arriving in groups of size X (>= 1; 1 with too little data). Swings slower than the
    detrending span are the level's (`LoadEstimate.level_rate`), not grouping."""
    c = np.asarray(counts, dtype=float)
    width = max(1, round(window_s / resolution_s))
    usable = (c.size // width) * width
    if usable < 3 * width or c[-usable:].sum() <= 0:
        return 1.0
    per_window = c[-usable:].reshape(-1, width).sum(axis=1)
    mean = float(per_window.mean())
    if mean <= 0:
        return 1.0
    k = max(3, detrend_windows | 1)  # odd
    if per_window.size < k:
        return max(1.0, float(per_window.var(ddof=1)) / mean)
    kernel = np.ones(k) / k
    padded = np.concatenate([np.full(k // 2, per_window[0]), per_window, np.full(k // 2, per_window[-1])])
    local = np.convolve(padded, kernel, mode="valid")
    # A window's own count is 1/k of its local mean: the residual variance is (1 - 1/k) of the true one.
    residual = float(np.mean((per_window - local) ** 2)) / (1.0 - 1.0 / k)
    return max(1.0, residual / mean)


def linear_trend(counts: npt.ArrayLike, resolution_s: float, span_s: float = TREND_SECONDS,
                 confidence: float = 0.0) -> float:
    """Least-squares slope of the rate over the last `span_s` (requests/s per second); 0 with too little data.
    `confidence` > 0 shrinks the slope towards 0 by that many standard errors (from the fit's residuals: bursty
    arrivals scatter more than Poisson ones); 0 where fewer than 4 points leave no residual to judge by."""
    c = np.asarray(counts, dtype=float)
    width = max(1, round(span_s / resolution_s))
    c = c[-width:]
    if c.size < 3:
        return 0.0
    # Aggregate to ~10-s buckets first: a slope through 1-s Poisson counts is mostly noise.
    per = max(1, round(BURST_WINDOW_SECONDS / resolution_s))
    usable = (c.size // per) * per
    if usable >= 3 * per:
        c = c[-usable:].reshape(-1, per).sum(axis=1) / (per * resolution_s)
        step = per * resolution_s
    else:
        c = c / resolution_s
        step = resolution_s
    x = np.arange(c.size) * step
    fit = np.polyfit(x, c, 1)
    slope = float(fit[0])
    if not math.isfinite(slope):
        return 0.0
    if confidence > 0:
        if c.size < 4:
            return 0.0
        resid = c - np.polyval(fit, x)
        se = math.sqrt(float(resid @ resid) / (c.size - 2) / float(((x - x.mean()) ** 2).sum()))
        slope = math.copysign(max(0.0, abs(slope) - confidence * se), slope)
    return slope


def estimate_load(
    arrival_counts: npt.ArrayLike,
    resolution_s: float,
    prompt_tokens: npt.ArrayLike = (),
    output_tokens: npt.ArrayLike = (),
    *,
    lead_seconds: float = 60.0,
    burst_window_s: float = BURST_WINDOW_SECONDS,
    burst_quantile: float = BURST_QUANTILE,
    history_s: float = HISTORY_SECONDS,
    trend_s: float = TREND_SECONDS,
    trend_confidence: float = 0.0,
) -> LoadEstimate:
    """The load to plan for from arrival counts per bin (oldest first) and the observed token lengths.

    `lead_seconds` is the model-load time: a rise the trend predicts within it is planned for now.
    """
    if resolution_s <= 0:
        raise ValueError("resolution must be > 0")
    if not 0.0 < burst_quantile <= 1.0:
        raise ValueError("burst quantile must be in (0, 1]")
    counts = np.asarray(arrival_counts, dtype=float)
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("arrival counts must be finite and >= 0")
    history = counts[-max(1, round(history_s / resolution_s)):]
    mean_rate = float(history.sum() / (history.size * resolution_s)) if history.size else 0.0
    rates = window_rates(history, resolution_s, burst_window_s)
    burst = float(np.quantile(rates, burst_quantile)) if rates.size else 0.0
    recent = float(rates[-1]) if rates.size else 0.0
    level_bins = history[-max(1, round(LEVEL_SECONDS / resolution_s)) :]
    level = float(level_bins.sum() / (level_bins.size * resolution_s)) if level_bins.size else 0.0
    slope = linear_trend(history, resolution_s, trend_s, trend_confidence)
    dispersion = arrival_dispersion(history, resolution_s, burst_window_s)
    rise = max(0.0, slope * lead_seconds)
    tokens: TokenDistribution | None = None
    mean_in = mean_out = None
    inp = np.asarray(prompt_tokens, dtype=float).reshape(-1)
    out = np.asarray(output_tokens, dtype=float).reshape(-1)
    if inp.size != out.size:
        raise ValueError("prompt and output token samples differ in length")
    if inp.size:
        mean_in = float(np.mean(inp))
        mean_out = float(np.mean(out))
        if inp.size >= MIN_TOKEN_SAMPLE:
            tokens = TokenDistribution.from_sample(inp, out)
    return LoadEstimate(
        requests_per_second=max(burst, recent) + rise,
        mean_rate=mean_rate,
        recent_rate=recent,
        level_rate=level,
        burst_rate=burst,
        trend_per_second=slope,
        rate_levels=rate_levels(history, resolution_s, burst_window_s, dispersion=dispersion),
        arrival_dispersion=dispersion,
        forecast_rise=rise,
        lead_seconds=lead_seconds,
        tokens=tokens,
        mean_prompt_tokens=mean_in,
        mean_output_tokens=mean_out,
    )
