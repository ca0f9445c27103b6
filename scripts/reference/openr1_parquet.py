#!/usr/bin/env python3
"""Parquet files laid out like Open-R1's datasets, written by pyarrow; and a reader for checks.

  openr1_parquet.py write DIR   writes DIR/openr1-math.parquet  (OpenR1-Math-220k's columns:
                                problem, solution, answer, problem_type, question_type, source,
                                uuid, is_reasoning_complete, generations, correctness_math_verify,
                                correctness_llama, finish_reasons, correctness_count, messages;
                                snappy, two row groups),
                                DIR/mixture-of-thoughts.parquet (Mixture-of-Thoughts' columns:
                                messages as list<struct<content, role>>, num_tokens, source; zstd),
                                DIR/prompts.parquet (problem, answer, and a messages column),
                                and DIR/expected.json: what each row should import as.
  openr1_parquet.py read FILE   prints {"columns": [...], "rows": [...]} as pyarrow reads FILE.

Used by tests/parquet.rs (needs pyarrow: scripts/test installs it in a venv).
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def think(reasoning, answer):
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def write(out):
    os.makedirs(out, exist_ok=True)
    msg_t = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    # OpenR1-Math-220k ("default" split): two generations per problem, verdicts per generation;
    # correctness_llama is null where Llama was not asked.
    problems = [
        ("What is $1+1$?", "2", "Adding gives $2$.", [True, False]),
        ("Compute $\\frac{1}{2}+\\frac{1}{3}$.", "\\frac{5}{6}", "Common denominator 6.", [True, True]),
        ("Solve $x^2=4$ for $x>0$.", "2", "Take the positive root.", [False, True]),
    ]
    rows = []
    expected = {"openr1-math": [], "mixture-of-thoughts": []}
    for i, (p, ans, sol, verdicts) in enumerate(problems):
        gens = [think(f"Reasoning {k} about problem {i}.", f"The answer is $\\boxed{{{ans if ok else 'x'}}}$.")
                for k, ok in enumerate(verdicts)]
        rows.append({
            "problem": p, "solution": sol, "answer": ans, "problem_type": "Algebra",
            "question_type": "math-word-problem", "source": "olympiads",
            "uuid": f"uuid-{i:04d}",
            "is_reasoning_complete": [True] * len(gens), "generations": gens,
            "correctness_math_verify": verdicts,
            "correctness_llama": None if i == 0 else [True] * len(gens),
            "finish_reasons": [None if i == 0 else "stop", "length" if i == 2 else "stop"],
            "correctness_count": sum(verdicts),
            "messages": [{"content": p, "role": "user"}, {"content": gens[0], "role": "assistant"}],
        })
        for k, ok in enumerate(verdicts):
            expected["openr1-math"].append({
                "prompt_id": f"openr1-math/uuid-{i:04d}", "sample": k, "user": p,
                "reasoning": f"Reasoning {k} about problem {i}.",
                "answer": f"The answer is $\\boxed{{{ans if ok else 'x'}}}$.",
                "passed": ok, "reference": ans, "solution": sol,
                "finish_reason": "length" if (i == 2 and k == 1) else "stop",
            })
    schema = pa.schema([
        ("problem", pa.string()), ("solution", pa.string()), ("answer", pa.string()),
        ("problem_type", pa.string()), ("question_type", pa.string()), ("source", pa.string()),
        ("uuid", pa.string()), ("is_reasoning_complete", pa.list_(pa.bool_())),
        ("generations", pa.list_(pa.string())), ("correctness_math_verify", pa.list_(pa.bool_())),
        ("correctness_llama", pa.list_(pa.bool_())), ("finish_reasons", pa.list_(pa.string())),
        ("correctness_count", pa.int64()), ("messages", msg_t),
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), f"{out}/openr1-math.parquet",
                   compression="snappy", row_group_size=2)

    # Mixture-of-Thoughts: a conversation with the reasoning inline in <think>; one is multi-turn.
    mot = [
        [{"content": "Write a haiku about rain.", "role": "user"},
         {"content": think("Five, seven, five.", "Soft rain on the roof"), "role": "assistant"}],
        [{"content": "You are terse.", "role": "system"},
         {"content": "2+2?", "role": "user"},
         {"content": think("Two and two.", "4"), "role": "assistant"},
         {"content": "And times 3?", "role": "user"},
         {"content": think("4 times 3 is 12.", "12"), "role": "assistant"}],
    ]
    for i, conv in enumerate(mot):
        last = conv[-1]["content"]
        reasoning, answer = last[len("<think>\n"):].split("\n</think>\n\n")
        expected["mixture-of-thoughts"].append({
            "prompt_id": f"mixture-of-thoughts/{i:08d}", "sample": 0,
            "turns": [[m["role"], m["content"]] for m in conv[:-1]],
            "reasoning": reasoning, "answer": answer,
        })
    mot_schema = pa.schema([("messages", msg_t), ("num_tokens", pa.int64()), ("source", pa.string())])
    pq.write_table(
        pa.Table.from_pylist([{"messages": c, "num_tokens": 100 + i, "source": "math"} for i, c in enumerate(mot)],
                             schema=mot_schema),
        f"{out}/mixture-of-thoughts.parquet", compression="zstd")

    # Prompts: a text column, an answer column, and the same prompt as a messages column.
    prompts = [{"problem": f"What is {a} + {b}?", "answer": str(a + b),
                "messages": [{"content": "Be brief.", "role": "system"},
                             {"content": f"What is {a} + {b}?", "role": "user"}]}
               for a, b in [(1, 1), (2, 3), (4, 4)]]
    pq.write_table(pa.Table.from_pylist(prompts, schema=pa.schema(
        [("problem", pa.string()), ("answer", pa.string()), ("messages", msg_t)])),
        f"{out}/prompts.parquet")
    expected["prompts"] = prompts
    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f, indent=1)


def read(path):
    t = pq.read_table(path)
    print(json.dumps({"columns": t.column_names,
                      "types": {f.name: str(f.type) for f in t.schema},
                      "rows": t.to_pylist()}))


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
