"""`wattkeeper calibrate` and `wattkeeper predict`."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from .calibration import calibrate, cross_validate, error_summary, predict_rows
from .datasets import row_from_dict, shared_data_dir, vidur_network_dir
from .model import Coefficients, coefficients_path, load_default_coefficients

PREDICTED_COLUMNS = ("pred_energy_per_token_j", "pred_avg_power_watts", "pred_output_tok_per_s", "pred_median_itl_ms")


def register(subparsers: Any) -> None:
    cal = subparsers.add_parser("calibrate", help="fit the energy model to ML.ENERGY-format measurements")
    cal.add_argument("--mlenergy", type=Path, help="configurations.csv (default: ../shared/data/mlenergy/...)")
    cal.add_argument("--vidur", type=Path, help="folder of Vidur *_all_reduce.csv (default: beside the CSV)")
    cal.add_argument("--out", type=Path, help=f"coefficients file to write (default: {coefficients_path()})")
    cal.add_argument("--no-cv", action="store_true", help="skip leave-one-model-out cross-validation")
    cal.set_defaults(func=run_calibrate)

    pred = subparsers.add_parser("predict", help="predict ML.ENERGY-format rows (batch full at max_num_seqs)")
    pred.add_argument("input", type=Path, help="CSV in the column format of ML.ENERGY configurations.csv")
    pred.add_argument("-o", "--output", type=Path, required=True, help="CSV to write, with pred_* columns added")
    pred.add_argument("--coefficients", type=Path, help="coefficients JSON (default: the committed one)")
    pred.set_defaults(func=run_predict)


def _print_errors(title: str, summaries: list[Any]) -> None:
    print(title)
    print(f"  {'metric':<22}{'median APE %':>14}{'p90 APE %':>12}{'rows':>7}")
    for s in summaries:
        print(f"  {s.metric:<22}{s.median_ape:>14.1f}{s.p90_ape:>12.1f}{s.count:>7}")


def run_calibrate(args: argparse.Namespace) -> int:
    csv_path: Path | None = args.mlenergy
    if csv_path is None:
        base = shared_data_dir()
        csv_path = base / "mlenergy" / "configurations.csv" if base else None
    if csv_path is None or not csv_path.is_file():
        print("calibrate: no ML.ENERGY CSV; pass --mlenergy PATH or set WATTKEEPER_DATA_DIR", file=sys.stderr)
        return 2
    vidur = args.vidur or vidur_network_dir(csv_path.resolve().parent.parent) or vidur_network_dir()
    coefficients, rows = calibrate(csv_path, vidur)
    out: Path = args.out or coefficients_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(coefficients.to_json())
    print(f"wrote {out} ({len(rows)} rows; all-reduce curves from {vidur or 'built-in fallback'})")
    _print_errors("in-sample errors:", error_summary(rows, predict_rows(rows, coefficients)))
    if not args.no_cv:
        summaries, _ = cross_validate(rows, coefficients.all_reduce_tables)
        _print_errors("leave-one-model-out cross-validation errors:", summaries)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    coefficients = (
        Coefficients.from_json(args.coefficients.read_text()) if args.coefficients else load_default_coefficients()
    )
    with args.input.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        raw_rows = list(reader)
    try:
        rows = [row_from_dict(r) for r in raw_rows]
    except (KeyError, ValueError) as exc:
        print(f"predict: bad input row: {exc}", file=sys.stderr)
        return 2
    predicted = predict_rows(rows, coefficients) if rows else {}
    keys = ("energy_per_token_j", "avg_power_watts", "output_tok_per_s", "median_itl_ms")
    with args.output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames + [c for c in PREDICTED_COLUMNS if c not in fieldnames])
        writer.writeheader()
        for i, raw in enumerate(raw_rows):
            out = dict(raw)
            for column, key in zip(PREDICTED_COLUMNS, keys, strict=True):
                out[column] = f"{float(predicted[key][i]):.6g}"
            writer.writerow(out)
    print(f"wrote {args.output} ({len(raw_rows)} rows)")
    return 0
