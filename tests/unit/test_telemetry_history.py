"""Arrival counts and token samples from Prometheus (telemetry/history.py): the counter-to-grid binning, the
histogram answers, both sources' queries, and what reaches the control core's Signals."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from wattkeeper.controller.decide import signals_from_observation
from wattkeeper.planner.load import HISTOGRAM_SAMPLE_SIZE, counts_from_counter
from wattkeeper.telemetry import PrometheusSource, ServiceObservation
from wattkeeper.telemetry.batch import observe_prometheus
from wattkeeper.telemetry.history import (
    arrival_counts,
    counts_on_grid,
    histogram_buckets,
    history_range,
    token_samples,
)

NOW = 1_800_000_000.0


def _matrix(samples: list[tuple[float, float]], **labels: str) -> dict[str, Any]:
    return {"metric": labels, "values": [[t, str(v)] for t, v in samples]}


def _bucket(le: str, value: float, **labels: str) -> dict[str, Any]:
    return {"metric": {"le": le, **labels}, "value": [NOW, str(value)]}


# --- binning -------------------------------------------------------------------------------------------------------


def test_a_steady_counter_fills_every_bin_of_a_grid_ending_at_the_given_time() -> None:
    times = np.arange(0.0, 61.0, 15.0)  # 0, 15, ..., 60: 3 requests per scrape
    counts = counts_on_grid(times, 3 * np.arange(times.size), end_s=60.0, resolution_s=15.0, bins=4)
    assert counts.tolist() == [3.0, 3.0, 3.0, 3.0]
    # Samples offset from the grid: each increase is split in proportion to the overlap.
    shifted = counts_on_grid([5.0, 20.0, 35.0], [0.0, 15.0, 30.0], end_s=45.0, resolution_s=15.0, bins=3)
    assert shifted.tolist() == pytest.approx([10.0, 15.0, 5.0])


def test_bins_outside_the_samples_get_nothing_and_the_grid_is_the_callers() -> None:
    # Samples from 30 s to 60 s only: nothing before the first sample or after the last is extrapolated.
    counts = counts_on_grid([30.0, 45.0, 60.0], [100.0, 106.0, 112.0], end_s=90.0, resolution_s=15.0, bins=6)
    assert counts.tolist() == [0.0, 0.0, 6.0, 6.0, 0.0, 0.0]
    # An increase that began before the grid counts only for the part inside it.
    assert counts_on_grid([0.0, 30.0], [0.0, 30.0], end_s=30.0, resolution_s=10.0, bins=2).tolist() == [10.0, 10.0]
    assert counts_on_grid([0.0], [5.0], end_s=30.0, resolution_s=10.0, bins=3).tolist() == [0.0, 0.0, 0.0]


def test_a_reset_counts_the_new_value_as_increase_does() -> None:
    # 40 -> 45 (+5), restart, 3 (+3), 9 (+6).
    counts = counts_on_grid([0.0, 15.0, 30.0, 45.0], [40.0, 45.0, 3.0, 9.0], end_s=45.0, resolution_s=15.0, bins=3)
    assert counts.tolist() == [5.0, 3.0, 6.0]


def test_a_gap_in_the_samples_is_spread_evenly_over_the_bins_it_spans() -> None:
    # A missed scrape between 15 s and 60 s: its 9 requests fall 3 in each of the three bins.
    counts = counts_on_grid([0.0, 15.0, 60.0], [0.0, 2.0, 11.0], end_s=60.0, resolution_s=15.0, bins=4)
    assert counts.tolist() == pytest.approx([2.0, 3.0, 3.0, 3.0])
    # Where the grid starts at the first sample, the same as planner/load.py counts_from_counter.
    assert counts.tolist() == pytest.approx(counts_from_counter([0.0, 15.0, 60.0], [0.0, 2.0, 11.0], 15.0).tolist())


def test_several_pods_are_summed_on_one_grid_ending_at_the_newest_sample() -> None:
    history = 600.0
    a = [(NOW - 612 + 15 * i, 2.0 * i) for i in range(41)]  # 2 per 15 s; last sample 12 s before the query
    b = [(NOW - 605 + 15 * i, 100.0 + i) for i in range(41)]  # 1 per 15 s; last sample 5 s before: the newest
    one_sample = [(NOW - 3, 7.0)]  # a pod scraped once: no increase yet
    counts = arrival_counts([_matrix(a, pod="x-1-a"), _matrix(b, pod="x-1-b"), _matrix(one_sample)], NOW, 15.0, history)
    assert len(counts) == 40
    # The grid ends at NOW - 5: pod b fills every bin; pod a's last 7 s are not scraped yet.
    assert counts[0] == pytest.approx(3.0) and counts[-2] == pytest.approx(3.0)
    assert counts[-1] == pytest.approx(1.0 + 2.0 * 8 / 15)
    assert sum(counts) == pytest.approx(40 * 3 - 2 * 7 / 15)


def test_a_service_younger_than_the_history_gets_bins_for_its_life_only() -> None:
    """200 s of a steady 2 requests per 15 s: 13 bins of 2, not 40 bins of which 27 are zeros before the service
    existed (which the load estimate read as idle two thirds of the time and three times as busy the rest)."""
    young = [(NOW - 200 + 1.0 * i, 2.0 * i / 15.0) for i in range(200)]
    counts = arrival_counts([_matrix(young)], NOW, 15.0)
    assert len(counts) == 13
    assert counts == pytest.approx([2.0] * 13)
    # Just started: one bin, never none.
    assert len(arrival_counts([_matrix([(NOW - 6, 0.0), (NOW - 1, 1.0)])], NOW, 15.0)) == 1


def test_arrival_counts_are_empty_without_a_counter_scraped_twice() -> None:
    assert arrival_counts([], NOW, 15.0) == ()
    assert arrival_counts([_matrix([(NOW - 1, 3.0)])], NOW, 15.0) == ()


def test_pods_silent_for_long_leave_their_recent_bins_empty() -> None:
    # The only pod stopped 5 minutes ago: its requests stay where they were, the last 5 minutes read as none.
    old = [(NOW - 900 + 15 * i, float(i)) for i in range(41)]  # ends at NOW - 300
    counts = arrival_counts([_matrix(old)], NOW, 15.0)
    assert len(counts) == 40 and sum(counts[-18:]) == 0 and counts[0] == pytest.approx(1.0)


def test_the_range_read_covers_the_history_and_two_scrapes() -> None:
    assert history_range(15.0) == "630s" and history_range(1.0) == "602s"


# --- token histograms ----------------------------------------------------------------------------------------------


def test_histogram_answers_are_parsed_with_inf_and_sorted() -> None:
    answer = [_bucket("+Inf", 40.0), _bucket("100.0", 30.0), _bucket("10", 10.0), _bucket("1000", float("nan"))]
    assert histogram_buckets(answer) == ([10.0, 100.0, float("inf")], [10.0, 30.0, 40.0])
    assert histogram_buckets([]) == ([], [])


def test_token_samples_need_enough_requests_in_both_histograms() -> None:
    prompt = ([100.0, 1000.0, float("inf")], [10.0, 40.0, 40.0])
    output = ([10.0, 100.0, float("inf")], [20.0, 40.0, 40.0])
    prompts, outputs = token_samples(prompt, output)
    assert len(prompts) == len(outputs) == HISTOGRAM_SAMPLE_SIZE
    assert min(prompts) >= 0 and max(prompts) <= 1000 and max(outputs) <= 100
    assert np.mean(np.asarray(prompts) <= 100) == pytest.approx(0.25)
    few = ([10.0, float("inf")], [3.0, 5.0])  # five requests: too thin to stand for a distribution
    assert token_samples(prompt, few) == ((), ())
    assert token_samples(([], []), output) == ((), ())


# --- the sources ---------------------------------------------------------------------------------------------------


def _prometheus(answers: dict[str, list[dict[str, Any]]]) -> tuple[PrometheusSource, list[httpx.Request]]:
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        query = request.url.params["query"]
        for needle, result in answers.items():
            if needle in query:
                kind = "matrix" if result and "values" in result[0] else "vector"
                return httpx.Response(200, json={"status": "success", "data": {"resultType": kind, "result": result}})
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return PrometheusSource("http://prom", client=client, clock=lambda: NOW), asked


def _steady(pod: str, per_scrape: float, namespace: str = "a", last: float = NOW - 4) -> dict[str, Any]:
    return _matrix([(last - 15 * (41 - i), per_scrape * i) for i in range(42)], namespace=namespace, pod=pod,
                   model_name="m", engine="0")


PROMPTS = [_bucket("100", 10.0), _bucket("1000", 40.0), _bucket("+Inf", 40.0)]
OUTPUTS = [_bucket("10", 20.0), _bucket("100", 40.0), _bucket("+Inf", 40.0)]


def test_one_service_reads_its_arrivals_and_token_lengths() -> None:
    source, asked = _prometheus({"DCGM_FI_DEV_POWER_USAGE": [{"metric": {}, "value": [NOW, "400"]}],
                                 "time_to_first_token_seconds_count": [_steady("llama-8b-5f6d7-abcde", 2.0),
                                                                       _steady("llama-8b-5f6d7-xyz12", 1.0)],
                                 "request_prompt_tokens_bucket": PROMPTS,
                                 "request_generation_tokens_bucket": OUTPUTS})
    obs = source.observe_service("a", "llama-8b", 60)
    assert obs.arrival_resolution_seconds == 15.0 and len(obs.arrival_counts) == 40
    assert obs.arrival_counts == pytest.approx([3.0] * 40)
    assert len(obs.prompt_tokens_sample) == len(obs.output_tokens_sample) == HISTOGRAM_SAMPLE_SIZE
    queries = {r.url.params["query"]: r.url.params.get("time") for r in asked}
    sel = 'namespace="a",pod=~"llama-8b-[a-z0-9]+-[a-z0-9]+"'
    assert queries[f"vllm:time_to_first_token_seconds_count{{{sel}}}[630s]"] == f"{NOW:.3f}"
    assert f"sum by (le) (increase(vllm:request_prompt_tokens_bucket{{{sel}}}[630s]))" in queries
    assert f"sum by (le) (increase(vllm:request_generation_tokens_bucket{{{sel}}}[630s]))" in queries


def test_without_such_series_the_history_is_empty_and_the_rest_stands() -> None:
    source, _ = _prometheus({"DCGM_FI_DEV_POWER_USAGE": [{"metric": {}, "value": [NOW, "400"]}],
                             "generation_tokens_total": [{"metric": {}, "value": [NOW, "50"]}]})
    obs = source.observe_service("a", "llama-8b", 60)
    assert obs.watts == 400 and obs.output_tokens_per_second == 50
    assert obs.arrival_counts == () and obs.arrival_resolution_seconds is None
    assert obs.prompt_tokens_sample == () and obs.output_tokens_sample == ()


def test_a_refused_history_query_leaves_the_history_empty() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        if "time_to_first_token_seconds_count" in query:
            return httpx.Response(422, json={"status": "error", "error": "query processing would load too many samples"})
        result = [{"metric": {}, "value": [NOW, "400"]}] if "DCGM_FI_DEV_POWER_USAGE" in query else []
        return httpx.Response(200, json={"status": "success", "data": {"result": result}})

    source = PrometheusSource("http://prom", client=httpx.Client(transport=httpx.MockTransport(handler)))
    obs = source.observe_service("a", "llama-8b", 60)
    assert obs.watts == 400 and obs.arrival_counts == ()


def test_the_batch_groups_pods_into_services_with_one_query_per_metric() -> None:
    source, asked = _prometheus({
        "DCGM_FI_DEV_POWER_USAGE": [{"metric": {"namespace": "a", "pod": "llama-8b-5f6d7-abcde"}, "value": [NOW, "300"]},
                                    {"metric": {"namespace": "b", "pod": "big-77c8d-q1w2e"}, "value": [NOW, "900"]}],
        "time_to_first_token_seconds_count": [_steady("llama-8b-5f6d7-abcde", 2.0), _steady("llama-8b-5f6d7-xyz12", 1.0),
                                              _steady("big-77c8d-q1w2e", 5.0, namespace="b"),
                                              _steady("stray", 9.0)],
        "request_prompt_tokens_bucket": [_bucket(b["metric"]["le"], float(b["value"][1]),
                                                 namespace="a", service="llama-8b") for b in PROMPTS],
        "request_generation_tokens_bucket": [_bucket(b["metric"]["le"], float(b["value"][1]),
                                                     namespace="a", service="llama-8b") for b in OUTPUTS],
    })
    out = observe_prometheus(source, [("a", "llama-8b"), ("b", "big")], 60)
    llama, big = out[("a", "llama-8b")], out[("b", "big")]
    assert isinstance(llama, ServiceObservation) and isinstance(big, ServiceObservation)
    assert llama.arrival_counts == pytest.approx([3.0] * 40) and big.arrival_counts == pytest.approx([5.0] * 40)
    assert len(llama.prompt_tokens_sample) == HISTOGRAM_SAMPLE_SIZE
    assert big.prompt_tokens_sample == ()  # its vLLM exported no token histograms
    names = ("request_prompt_tokens_bucket", "request_generation_tokens_bucket", "time_to_first_token_seconds_count")
    history = [q for r in asked if any(n in (q := r.url.params["query"]) for n in names)]
    assert len(history) == 3  # one per metric for every service
    assert 'sum by (namespace, service, le) (label_replace(increase(vllm:request_prompt_tokens_bucket{' \
           'namespace=~"a|b",pod!=""}[630s]), "service", "$1", "pod", "(.+)-[^-]+-[^-]+"))' in history


# --- into the core -------------------------------------------------------------------------------------------------


def test_the_operator_hands_the_core_the_arrivals_and_token_lengths() -> None:
    obs = ServiceObservation(watts=400.0, arrival_counts=(1.0, 2.0, 3.0), arrival_resolution_seconds=15.0,
                             prompt_tokens_sample=(100.0, 200.0), output_tokens_sample=(10.0, 20.0))
    signals = signals_from_observation(obs, 60.0)
    assert signals is not None
    assert signals.arrival_counts == (1.0, 2.0, 3.0) and signals.arrival_resolution_seconds == 15.0
    assert signals.prompt_tokens_sample == (100.0, 200.0) and signals.output_tokens_sample == (10.0, 20.0)
    older = signals_from_observation(ServiceObservation(watts=400.0), 60.0)
    assert older is not None and older.arrival_counts == () and older.arrival_resolution_seconds is None
