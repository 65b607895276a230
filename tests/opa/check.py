#!/usr/bin/env python3
"""The shipped policies under the real OPA engine, beside regorus.

1. Every `test_*` rule of policies/guestgate/*_test.rego must be true under OPA.
2. The decision corpus of the gateway's policy cases (tests/cases/*.json), as
   `guestgate eval --batch` builds each input (route, facts), is decided by OPA and by
   regorus; `allow`, `reason` and `status` must agree.
3. Each guest input with one of its facts removed (or malformed) must be denied by both.

OPA comes from PyPI's opa-golib-python-bindings (OPA's Go engine as a shared library with a
ctypes wrapper), pinned and hash-checked by tests/opa/run.sh, which also builds guestgate
and calls this script. Usage: check.py <guestgate binary> <folder holding opa_bindings>
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FACTS = ["regular", "guest", "expired", "permissions"]
MALFORMED = {"regular": "no", "guest": "yes", "expired": "no", "permissions": "view"}


def main():
    guestgate, site = sys.argv[1], sys.argv[2]
    sys.path.insert(0, site)
    from opa_bindings.engine import OpaEngine  # noqa: E402

    failures = []
    policy_dir = os.path.join(ROOT, "policies", "guestgate")
    sources = {p: open(p).read() for p in sorted(glob.glob(os.path.join(policy_dir, "*.rego")))}
    policies = {p: s for p, s in sources.items() if not p.endswith("_test.rego")}

    # 1. The Rego unit tests.
    tests = OpaEngine()
    for path, source in sources.items():
        tests.add_policy(os.path.relpath(path, ROOT), source)
    ran = 0
    for path, source in sources.items():
        if not path.endswith("_test.rego"):
            continue
        package = re.search(r"^package\s+([\w.]+)", source, re.M).group(1)
        for name in sorted(set(re.findall(r"^(test_\w+)", source, re.M))):
            ran += 1
            try:
                ok = tests.eval_document(f"{package}.{name}", {}) is True
            except Exception as e:  # undefined or an evaluation error: a failure
                ok = False
                name = f"{name} ({e})"
            if not ok:
                failures.append(f"opa test: {name} is not true")
    print(f"opa test: {ran} test rules, {ran - sum(f.startswith('opa test') for f in failures)} passed")

    # 2. The decision corpus.
    requests = []
    for case_file in sorted(glob.glob(os.path.join(ROOT, "tests", "cases", "*.json"))):
        corpus = json.load(open(case_file))
        for case in corpus.get("cases", []):
            if "url" not in case:
                continue
            request = {"method": case.get("method", "GET"), "url": case["url"]}
            if case.get("user"):
                request["user"] = case["user"]
                request["groups"] = case.get("groups", [])
            requests.append(request)
    judged = eval_batch(guestgate, {"requests": requests})
    engine = OpaEngine()
    for path, source in policies.items():
        engine.add_policy(os.path.relpath(path, ROOT), source)
    engine.add_data(judged["data"])
    compared = 0
    guest_inputs = []
    for request, result in zip(requests, judged["requests"]):
        inp = result.get("input")
        if not inp:
            continue  # refused before the policy (400, 401): nothing for either engine
        compared += 1
        mine = result["decision"]
        theirs = opa_decision(engine, inp)
        if not same(mine, theirs):
            failures.append(f"differs: {request} regorus={mine} opa={theirs}")
        # A public route is allowed whoever asks; every other allowed guest request
        # stands on the facts.
        if mine.get("guest") and mine.get("allow") and mine.get("reason") != "public_route":
            guest_inputs.append((request, inp))

    # 3. Each fact of an allowed guest input, taken away or malformed, denies in both.
    mutated = []
    for request, inp in guest_inputs:
        for fact in FACTS:
            dropped = json.loads(json.dumps(inp))
            dropped["user"].pop(fact, None)
            mutated.append((request, f"without {fact}", dropped))
            bad = json.loads(json.dumps(inp))
            bad["user"][fact] = MALFORMED[fact]
            mutated.append((request, f"{fact} malformed", bad))
    regorus = eval_batch(guestgate, {"inputs": [m[2] for m in mutated]})["inputs"]
    for (request, what, inp), mine in zip(mutated, regorus):
        mine = mine.get("decision", {"allow": False})
        theirs = opa_decision(engine, inp)
        if mine.get("allow") is not False or theirs.get("allow") is not False:
            failures.append(f"not denied {what}: {request} regorus={mine} opa={theirs}")

    print(f"differential: {compared} decisions compared, {len(mutated)} inputs with a fact taken away or malformed")
    for f in failures:
        print(f"FAIL {f}")
    print(f"{compared + len(mutated) + ran - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


def eval_batch(guestgate, batch):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(batch, f)
    try:
        out = subprocess.run(
            [guestgate, "eval", "--config", os.path.join(ROOT, "config", "guestgate.toml"), "--batch", f.name],
            check=True, capture_output=True, text=True,
            env=dict(os.environ, GUESTGATE_HS256_SECRET=os.environ.get("GUESTGATE_HS256_SECRET", "x" * 40)),
        ).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)


def opa_decision(engine, inp):
    try:
        return engine.eval_document("guestgate.decision", inp)
    except Exception as e:  # undefined: the shipped policy always defines it
        return {"allow": None, "error": str(e)}


def same(a, b):
    return all(a.get(k) == b.get(k) for k in ("allow", "reason", "status"))


if __name__ == "__main__":
    main()
