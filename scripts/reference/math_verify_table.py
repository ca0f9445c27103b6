#!/usr/bin/env python3
"""Run Hugging Face's math-verify over a JSONL table of gold/pred cases.

The reference for teacher/src/verify/math.rs. Input is a table such as
teacher/tests/data/math-verify-cases.jsonl (math-verify 0.9.0's own test suite, one
parametrized case a line); each line needs "gold", "pred" and "expected", and may have
"id", "settings" and "default". Not needed by CI: the results it writes are committed.

Install by hand (versions used for the committed results):
    python3 -m venv ~/.cache/distill/venv-math-verify
    ~/.cache/distill/venv-math-verify/bin/pip install \\
        "math-verify[antlr4_13_2]==0.9.0" "antlr4-python3-runtime==4.13.2"
(The explicit antlr4 pin is there because pip 23 does not resolve the extra's name and
only warns; math-verify 0.9.0 pulls latex2sympy2_extended 1.11.0 and sympy 1.14.)

Run:
    ~/.cache/distill/venv-math-verify/bin/python scripts/reference/math_verify_table.py \\
        teacher/tests/data/math-verify-cases.jsonl \\
        --out teacher/tests/data/math-verify-results.jsonl

Settings, all optional, mirror the suite's helper compare_strings (tests/test_all.py):
    match_types             ["latex", "expr"] (default) or a subset; "latex" builds a
                            LatexExtractionConfig, "expr" an ExprExtractionConfig
    boxed_match_priority    LatexExtractionConfig's, library default 50 (the helper uses 0)
    precision               verify's float_rounding, default 6
    strict                  verify's strict, default True
    allow_set_relation_comp verify's allow_set_relation_comp, default False
A case with no settings runs exactly verify(parse(gold), parse(pred)), library defaults.
A case marked "extracted": true holds bare answers (distill's teacher/tests/data/math-cases.jsonl);
they are wrapped in $…$ first, since math-verify's LaTeX extraction needs delimiters; in a
"completion": true case only the gold (a bare answer key) is wrapped.
A case marked "default": true that has settings is also run that plain way, reported as
"math_verify_default", so the table shows whether the helper's settings matter.

Each output line: id, math_verify (the verdict; null if math-verify raised), expected,
agrees, seconds (parse gold + parse pred + verify), gold_parsed / pred_parsed (str() of
what parse returned), and error when something raised. Timeouts use math-verify's own
parsing_timeout / timeout_seconds (SIGALRM, so this runs single-threaded). parse caches
LaTeX results, so a string seen before is cheaper the second time.
"""
import argparse
import json
import statistics
import sys
import time

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException


def extraction_targets(settings):
    """None for library defaults, else the configs compare_strings would build."""
    if "match_types" not in settings and "boxed_match_priority" not in settings:
        return None
    latex_kwargs = {}
    if "boxed_match_priority" in settings:
        latex_kwargs["boxed_match_priority"] = settings["boxed_match_priority"]
    targets = []
    for match_type in settings.get("match_types", ["latex", "expr"]):
        if match_type == "latex":
            targets.append(LatexExtractionConfig(**latex_kwargs))
        elif match_type == "expr":
            targets.append(ExprExtractionConfig())
        else:
            raise ValueError(f"unknown match type {match_type!r}")
    return targets


def run_case(gold, pred, settings, timeout):
    """One verdict: (verdict or None, seconds, gold_parsed, pred_parsed, error)."""
    gold_parsed = pred_parsed = None
    start = time.perf_counter()
    try:
        targets = extraction_targets(settings)
        parse_kwargs = {"parsing_timeout": timeout}
        if targets is not None:
            parse_kwargs["extraction_config"] = targets
        gold_parsed = parse(gold, **parse_kwargs)
        pred_parsed = parse(pred, **parse_kwargs)
        verdict = verify(
            gold_parsed,
            pred_parsed,
            float_rounding=settings.get("precision", 6),
            strict=settings.get("strict", True),
            allow_set_relation_comp=settings.get("allow_set_relation_comp", False),
            timeout_seconds=timeout,
        )
        error = None
    except (Exception, TimeoutException) as e:  # TimeoutException is a BaseException
        verdict, error = None, f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    return verdict, seconds, show(gold_parsed), show(pred_parsed), error


def show(parsed):
    return None if parsed is None else [str(x) for x in parsed]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", help="JSONL with gold, pred, expected[, id, settings, default]")
    ap.add_argument("--out", required=True, help="JSONL of per-case results")
    ap.add_argument("--timeout", type=int, default=5,
                    help="seconds, for parse's parsing_timeout and verify's timeout_seconds")
    args = ap.parse_args()

    with open(args.table, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]

    results = []
    with open(args.out, "w", encoding="utf-8") as out:
        for n, case in enumerate(cases):
            settings = case.get("settings") or {}
            gold, pred = case["gold"], case["pred"]
            if case.get("extracted"):
                # Both are bare answers (distill's table): math-verify reads LaTeX between
                # delimiters, so they are given to it as `$…$`, as an answer key would be.
                gold, pred = f"${gold}$", f"${pred}$"
            elif case.get("completion"):
                # A whole completion against a bare answer key: the key is wrapped likewise.
                gold = f"${gold}$"
            verdict, seconds, gold_parsed, pred_parsed, error = run_case(
                gold, pred, settings, args.timeout)
            expected = bool(case["expected"])
            row = {
                "id": case.get("id", f"line {n + 1}"),
                "math_verify": verdict,
                "expected": expected,
                "agrees": verdict is not None and bool(verdict) == expected,
                "seconds": round(seconds, 6),
                "gold_parsed": gold_parsed,
                "pred_parsed": pred_parsed,
            }
            if error:
                row["error"] = error
            if "default" in case:
                row["default"] = bool(case["default"])
            if case.get("default") and settings:
                plain, plain_seconds, _, _, plain_error = run_case(
                    case["gold"], case["pred"], {}, args.timeout)
                row["math_verify_default"] = plain
                row["agrees_default"] = plain is not None and bool(plain) == expected
                row["seconds_default"] = round(plain_seconds, 6)
                if plain_error:
                    row["error_default"] = plain_error
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            results.append(row)

    summarize(results)


def summarize(results):
    def agreeing(rows, key="agrees"):
        return sum(1 for r in rows if r.get(key, r["agrees"]))

    secs = [r["seconds"] for r in results]
    default = [r for r in results if r.get("default")]
    slowest = max(results, key=lambda r: r["seconds"], default=None)
    print(f"cases: {len(results)}")
    print(f"agreements: {agreeing(results)}/{len(results)}")
    if default:
        print(f"default-settings cases: {len(default)}")
        print(f"  agreements with the case's settings: {agreeing(default)}/{len(default)}")
        print("  agreements with plain verify(parse(gold), parse(pred)): "
              f"{agreeing(default, 'agrees_default')}/{len(default)}")
    if secs:
        print(f"seconds per verdict: mean {statistics.mean(secs):.4f}, "
              f"median {statistics.median(secs):.4f}, max {max(secs):.4f} ({slowest['id']})")
    errors = [r["id"] for r in results if "error" in r]
    if errors:
        print(f"errors: {len(errors)}: {', '.join(errors)}")
    for r in results:
        if not r["agrees"] or not r.get("agrees_default", True):
            print(f"disagrees: {r['id']} expected {r['expected']} got {r['math_verify']}"
                  + (f", plain defaults {r['math_verify_default']}"
                     if "math_verify_default" in r else ""))


if __name__ == "__main__":
    sys.exit(main())
