#!/usr/bin/env python3
"""Arithmetic word problems with checkable answers, written for distill's GRPO quickstart.

    python3 scripts/make-arithmetic-prompts.py > recipes/data/arithmetic-prompts.jsonl

Half are bare single-digit sums, differences and products ("What is 7 + 5?"), half one- and
two-step word problems with small whole numbers (sums, differences, products, equal shares), each
with its integer answer: SmolLM2-135M-Instruct passes about a quarter of the first kind and few of
the second, so a group of samples of most prompts holds both right and wrong answers. Seeded, so the file is reproducible; the GRPO
recipe holds out a seeded share of them (`eval_prompts`) as its test split.
"""
import json
import random

rng = random.Random(29)
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena",
         "Milo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["apple", "pencil", "marble", "sticker", "book", "cookie", "coin", "shell", "card", "stamp"]


def one(i):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "div", "two", "plain"])
    if kind == "add":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?", a + b
    if kind == "sub":
        a = rng.randint(10, 40)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {item}s and gave {b} of them away. How many {item}s are left?", a - b
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return f"A bag holds {a} {item}s. How many {item}s are in {b} bags?", a * b
    if kind == "div":
        a, b = rng.randint(2, 10), rng.randint(2, 6)
        return f"{name} shares {a * b} {item}s equally among {b} friends. How many {item}s does each friend get?", a
    if kind == "two":
        a, b = rng.randint(5, 20), rng.randint(2, 15)
        c = rng.randint(1, a + b - 1)
        return (f"{name} has {a} {item}s, buys {b} more, then gives {c} to a friend. "
                f"How many {item}s does {name} have now?"), a + b - c
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    op = rng.choice(["+", "-", "*"])
    if op == "-" and b > a:
        a, b = b, a
    return f"What is {a} {op} {b}?", eval(f"{a} {op} {b}")


def bare():
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.choice(["+", "-", "*"])
    if op == "-" and b > a:
        a, b = b, a
    return f"What is {a} {op} {b}?", eval(f"{a} {op} {b}")


seen = set()
rows = []
while len(rows) < 240:
    word = len(rows) % 2 == 1
    q, ans = one(len(rows)) if word else bare()
    if q in seen:
        continue
    seen.add(q)
    kind = "word" if word else "bare"
    rows.append({"id": f"{kind}-{len(rows):03d}", "question": q, "answer": str(ans)})
for r in rows:
    print(json.dumps(r))
