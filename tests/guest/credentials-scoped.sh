#!/bin/sh
# exec-mode workload: API_KEY holds a per-VM random placeholder, bound to GET /v1/allowed/**
# on api.example.com. curl sends it inside and outside that binding, once with the agent's
# environment and once under env -i (transparent capture). Prints findings for the test.
echo "workload: placeholder=$API_KEY"
check() { # check LABEL PATH [env -i]
  label=$1 path=$2; shift 2
  hdrs=$("$@" curl -sS --max-time 120 -o /dev/null -D - \
    -H "Authorization: Bearer $API_KEY" "https://api.example.com$path" 2>&1)
  code=$(echo "$hdrs" | awk 'toupper($1) ~ /^HTTP/ { c = $2 } END { print c }')
  reason=$(echo "$hdrs" | grep -i '^x-sluice-reason:' | tr -d '\r')
  echo "workload: scoped $label status=$code $reason"
}
check inside /v1/allowed/env
check outside /v1/other/env
check inside-envi /v1/allowed/envi env -i
check outside-envi /v1/other/envi env -i
echo "workload: done"
