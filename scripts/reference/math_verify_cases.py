"""Extract gold/pred cases from math-verify's test suite into JSONL (ast-based)."""
import ast
import json
import math
import sys
from pathlib import Path

root = Path(sys.argv[1])  # directory containing tests/
out = Path(sys.argv[2])

# compare_strings defaults (tests/test_all.py)
HELPER_DEFAULTS = {
    "match_types": ["latex", "expr"],
    "precision": 6,
    "strict": True,
    "allow_set_relation_comp": False,
}


def value(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        # f-strings such as f"{math.sqrt(17):.15f}"
        code = compile(ast.Expression(node), "<case>", "eval")
        return eval(code, {"__builtins__": {}, "math": math})


def find_call(fn):
    """Return (kind, call) where kind is 'compare_strings' or 'verify'."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "compare_strings":
                return "compare_strings", node
            if node.func.id == "verify":
                return "verify", node
    return None, None


def helper_settings(call, bind):
    """Settings passed to compare_strings, resolved against the case's params."""
    s = dict(HELPER_DEFAULTS)
    for kw in call.keywords:
        if isinstance(kw.value, ast.Name):
            s[kw.arg] = bind[kw.value.id]
        else:
            s[kw.arg] = value(kw.value)
    return s


def expected_name(fn, call):
    """The parameter the test compares the verdict with."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare) and isinstance(node.comparators[0], ast.Name):
            return node.comparators[0].id
    raise RuntimeError(fn.name)


def record(rows, file, line, test, gold, pred, expected, kind, s):
    assert isinstance(gold, str) and isinstance(pred, str), (file, line)
    assert expected in (0, 1, True, False), (file, line, expected)
    if kind == "verify":  # verify(parse(gold), parse(pred)), library defaults
        settings, default = {}, True
    else:
        # The helper always builds LatexExtractionConfig(boxed_match_priority=0)
        # (library default is 50); record it so the reference run mirrors the suite.
        settings = {k: v for k, v in s.items() if v != HELPER_DEFAULTS[k]}
        if "latex" in s["match_types"]:
            settings["boxed_match_priority"] = 0
        default = (
            s["match_types"] == ["latex", "expr"]
            and s["precision"] == 6
            and s["strict"] is True
            and s["allow_set_relation_comp"] is False
        )
    rows.append(
        {
            "id": f"{file}:{line}",
            "file": file,
            "line": line,
            "test": test,
            "gold": gold,
            "pred": pred,
            "expected": bool(expected),
            "settings": settings,
            "default": default,
        }
    )


rows = []
skipped = []
for path in sorted((root / "tests").glob("test_*.py")):
    file = f"tests/{path.name}"
    tree = ast.parse(path.read_text(), filename=file)
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        kind, call = find_call(fn)
        params = None
        for dec in fn.decorator_list:
            if (
                isinstance(dec, ast.Call)
                and isinstance(dec.func, ast.Attribute)
                and dec.func.attr == "parametrize"
            ):
                params = dec
        if kind is None:
            skipped.append(f"{file}::{fn.name} (no gold/pred comparison)")
            continue
        if params is None:
            # Non-parametrized: pick up literal compare_strings(...) == N asserts.
            before = len(rows)
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Compare)
                    and isinstance(node.left, ast.Call)
                    and isinstance(node.left.func, ast.Name)
                    and node.left.func.id == "compare_strings"
                ):
                    c = node.left
                    s = helper_settings(c, {})
                    record(rows, file, c.lineno, fn.name, value(c.args[0]),
                           value(c.args[1]), value(node.comparators[0]),
                           "compare_strings", s)
            if len(rows) == before:
                skipped.append(f"{file}::{fn.name} (no literal gold/pred case)")
            continue
        names = [n.strip() for n in value(params.args[0]).split(",")]
        exp_name = expected_name(fn, call)
        # first two positional args of the call name the gold and pred params
        if kind == "verify":
            gname, pname = (a.args[0].id for a in call.args[:2])
        else:
            gname, pname = (a.id for a in call.args[:2])
        for case in params.args[1].elts:
            vals = [value(e) for e in case.elts]
            bind = dict(zip(names, vals))
            s = helper_settings(call, bind) if kind == "compare_strings" else None
            record(rows, file, case.lineno, fn.name, bind[gname], bind[pname],
                   bind[exp_name], kind, s)

# Several cases on one source line (tests/test_strict.py): suffix #n to keep ids unique.
per_line = {}
for r in rows:
    per_line.setdefault(r["id"], []).append(r)
for group in per_line.values():
    if len(group) > 1:
        for n, r in enumerate(group, 1):
            r["id"] += f"#{n}"

with out.open("w") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(rows), "cases;", sum(r["default"] for r in rows), "default", file=sys.stderr)
for s in skipped:
    print("skipped", s, file=sys.stderr)
