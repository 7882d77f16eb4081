#!/usr/bin/env bash
# Validates the operations assets: alert rules, their unit tests, the Grafana dashboard,
# the runbook <-> alert pairing and the compose file.
#
#   bash ops/check.sh            # from anywhere; exits non-zero if any check failed
#
# Needs: promtool (Debian: apt-get install prometheus), python3 (standard library only).
# Optional: docker-compose or `docker compose` for compose validation (without them only
# the structure check runs). Set PROMTOOL=/path/to/promtool to use another promtool,
# PYTHON=/path/to/python3 for another python, OPS_CHECK_COMPOSE to force a validator.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROMTOOL="${PROMTOOL:-promtool}"
PY="${PYTHON:-python3}"
failed=()
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; failed+=("$*"); }

# ---------------------------------------------------------------------------------------
step "tools"
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
  fail "promtool not found (install: apt-get install -y prometheus, or set PROMTOOL=)"
  PROMTOOL=""
else
  "$PROMTOOL" --version 2>&1 | head -n 1
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  fail "python3 not found"
  PY=""
fi

# ---------------------------------------------------------------------------------------
step "promtool check rules alerts/*.rules.yml"
shopt -s nullglob
rule_files=(alerts/*.rules.yml)
test_files=(alerts/tests/*.yml)
dashboards=(dashboards/*.json)
shopt -u nullglob
if [ ${#rule_files[@]} -eq 0 ]; then
  fail "no rule files in alerts/"
elif [ -n "$PROMTOOL" ]; then
  "$PROMTOOL" check rules "${rule_files[@]}" || fail "promtool check rules"
fi

# ---------------------------------------------------------------------------------------
step "promtool test rules alerts/tests/*.yml"
if [ ${#test_files[@]} -eq 0 ]; then
  fail "no rule unit tests in alerts/tests/"
elif [ -n "$PROMTOOL" ]; then
  "$PROMTOOL" test rules "${test_files[@]}" || fail "promtool test rules"
fi

# ---------------------------------------------------------------------------------------
step "dashboards: JSON syntax (python3 -m json.tool)"
if [ ${#dashboards[@]} -eq 0 ]; then
  fail "no dashboards in dashboards/"
elif [ -n "$PY" ]; then
  for d in "${dashboards[@]}"; do
    if "$PY" -m json.tool "$d" >/dev/null; then echo "ok: $d"; else fail "invalid JSON: $d"; fi
  done
fi

# ---------------------------------------------------------------------------------------
step "dashboards: every PromQL expression parses (promtool, via a temporary rules file)"
if [ -n "$PY" ] && [ -n "$PROMTOOL" ] && [ ${#dashboards[@]} -gt 0 ]; then
  if "$PY" - "$TMP/dashboard-exprs.rules.yml" "${dashboards[@]}" <<'PYEOF'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
exprs = []
def walk(node, where):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str) and node["expr"].strip():
            exprs.append((where, node["expr"]))
        for v in node.values():
            walk(v, where)
    elif isinstance(node, list):
        for v in node:
            walk(v, where)
for f in files:
    walk(json.load(open(f)), f)
# Grafana variables -> values promtool accepts.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${queue}": ".*", "$queue": ".*"}
with open(out, "w") as fh:
    fh.write("groups:\n  - name: dashboard-expressions\n    rules:\n")
    for i, (where, e) in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            sys.exit(f"{where}: unsupported Grafana variable left in expression: {e}")
        fh.write(f"      - record: dashboard:expr_{i}:check\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} expressions")
PYEOF
  then
    "$PROMTOOL" check rules "$TMP/dashboard-exprs.rules.yml" >/dev/null \
      && echo "ok: all dashboard expressions parse" \
      || { "$PROMTOOL" check rules "$TMP/dashboard-exprs.rules.yml" || true; fail "a dashboard PromQL expression does not parse"; }
  else
    fail "could not extract dashboard expressions"
  fi
fi

# ---------------------------------------------------------------------------------------
step "runbooks <-> alerts pairing, runbook sections, fire/quiet test coverage"
if [ -n "$PY" ] && [ ${#rule_files[@]} -gt 0 ]; then
  "$PY" - "${rule_files[@]}" <<'PYEOF' || fail "runbook pairing / alert test coverage"
import glob, os, re, sys
problems = []
alerts = {}  # name -> {"runbook_url":..., "severity":..., "file":...}
for f in sys.argv[1:]:
    cur = None
    for line in open(f):
        m = re.match(r"\s*- (alert|record):\s*(\S+)", line)
        if m:
            cur = m.group(2) if m.group(1) == "alert" else None
            if cur:
                if cur in alerts:
                    problems.append(f"{f}: alert {cur} defined twice")
                alerts[cur] = {"file": f}
            continue
        if cur:
            m = re.match(r"\s*(runbook_url|severity|summary|description):\s*(.*)", line)
            if m:
                alerts[cur][m.group(1)] = m.group(2).strip().strip('"')
# The committed file uses the default base of `taskstream alerts --runbook-base-url`
# (src/cli/alerts.rs); each process serves the runbook there (src/runbooks.rs).
base = "http://localhost:9464/runbooks/"
for name, a in sorted(alerts.items()):
    for k in ("severity", "summary", "description", "runbook_url"):
        if k not in a:
            problems.append(f"alert {name}: missing {k}")
    if a.get("severity") not in ("critical", "warning", "info", "none"):
        problems.append(f"alert {name}: severity {a.get('severity')!r} is not critical/warning/info/none")
    if a.get("runbook_url") != base + name:
        problems.append(f"alert {name}: runbook_url should be {base}{name}, got {a.get('runbook_url')}")
    path = f"runbooks/{name}.md"
    if not os.path.isfile(path):
        problems.append(f"alert {name}: {path} is missing")
    else:
        text = open(path).read()
        if not text.startswith(f"# {name}\n"):
            problems.append(f"{path}: must start with '# {name}'")
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            if f"\n{section}\n" not in text:
                problems.append(f"{path}: missing section '{section}'")
for path in sorted(glob.glob("runbooks/*.md")):
    name = os.path.basename(path)[:-3]
    if name != "README" and name not in alerts:
        problems.append(f"{path}: no alert named {name} (rename or delete the runbook)")
    if name != "README" and name in alerts and f"[{name}.md]" not in open("runbooks/README.md").read():
        problems.append(f"runbooks/README.md: alert table does not link {name}.md")
# Unit-test coverage: every alert has a case where it fires and one where it stays quiet.
fires, quiet = set(), set()
for f in sorted(glob.glob("alerts/tests/*.yml")):
    lines = open(f).read().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*alertname:\s*(\S+)\s*$", line)
        if not m:
            continue
        nxt = next((l.strip() for l in lines[i + 1:] if l.strip() and not l.strip().startswith("#")), "")
        (quiet if nxt.replace(" ", "") == "exp_alerts:[]" else fires).add(m.group(1))
for name in sorted(alerts):
    if name not in fires:
        problems.append(f"alert {name}: no unit test where it fires")
    if name not in quiet and name != "Watchdog":
        problems.append(f"alert {name}: no unit test where it stays quiet")
for name in sorted((fires | quiet) - set(alerts)):
    problems.append(f"alerts/tests: tests an alert that does not exist: {name}")
for p in problems:
    print("  " + p, file=sys.stderr)
print(f"{len(alerts)} alerts, {len(glob.glob('runbooks/*.md'))} runbook files, {len(problems)} problems")
sys.exit(1 if problems else 0)
PYEOF
fi

# ---------------------------------------------------------------------------------------
step "compose file"
# OPS_CHECK_COMPOSE=auto (default) | docker-compose | docker | python forces one validator.
mode="${OPS_CHECK_COMPOSE:-auto}"
if [ "$mode" = auto ]; then
  if command -v docker-compose >/dev/null 2>&1; then
    mode=docker-compose
  elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    mode=docker
  else
    mode=python
  fi
fi
case "$mode" in
  docker-compose)
    echo "using: docker-compose $(docker-compose version --short 2>/dev/null || true)"
    docker-compose -f docker-compose.yml config -q || fail "docker-compose config"
    ;;
  docker)
    echo "using: docker compose $(docker compose version --short 2>/dev/null || true)"
    docker compose -f docker-compose.yml config -q || fail "docker compose config"
    ;;
  python)
    echo "no docker-compose / docker compose: structural check with python3 only"
    ;;
  *)
    fail "OPS_CHECK_COMPOSE=$mode is not one of auto, docker-compose, docker, python"
    ;;
esac
# Always: the services this repository promises are there (PyYAML if importable, else a
# minimal line-based check; python3 has no PyYAML by default).
if [ -n "$PY" ]; then
  "$PY" - docker-compose.yml <<'PYEOF' || fail "docker-compose.yml structure"
import re, sys
path = sys.argv[1]
text = open(path).read()
required = ["redis", "worker-1", "worker-2", "orchestrator", "prometheus", "grafana"]
try:
    import yaml  # PyYAML, when available
except ImportError:
    yaml = None
if yaml is not None:
    doc = yaml.safe_load(text)
    services = (doc or {}).get("services") or {}
    missing = [s for s in required if s not in services]
    bad = [s for s, v in services.items() if not isinstance(v, dict) or not ("image" in v or "build" in v)]
    if missing or bad:
        sys.exit(f"{path}: missing services {missing}, services without image/build {bad}")
    print(f"ok (PyYAML): services {sorted(services)}")
else:
    # Minimal check without a YAML parser: no tabs, a top-level services: key, and every
    # required service declared at two-space indentation under it.
    if "\t" in text:
        sys.exit(f"{path}: contains a tab character")
    if not re.search(r"^services:\s*$", text, re.M):
        sys.exit(f"{path}: no top-level 'services:' key")
    missing = [s for s in required if not re.search(rf"^  {re.escape(s)}:\s*$", text, re.M)]
    if missing:
        sys.exit(f"{path}: missing services {missing}")
    print(f"ok (minimal check without PyYAML): services {required}")
PYEOF
else
  fail "cannot check docker-compose.yml structure without python3"
fi

# ---------------------------------------------------------------------------------------
step "summary"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'ops/check.sh: %d check(s) failed:\n' "${#failed[@]}" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "ops/check.sh: all checks passed"
