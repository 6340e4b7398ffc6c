#!/bin/sh
# exec-mode workload on the Debian root: curl and Python requests through the agent's proxy,
# trusting only what the agent installed (no -k, no --cacert, no verify=False).
echo "workload: start API_KEY=$API_KEY"
out=$(curl -sS --max-time 120 -H "Authorization: Bearer $API_KEY" https://api.example.com/v1/curl 2>&1)
echo "workload: curl-exit=$? out=$out"
python3 - <<'PY'
import os, requests
try:
    r = requests.get("https://api.example.com/v1/python", timeout=120,
                     headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
    print("workload: python-status=%d out=%s" % (r.status_code, r.text.strip()), flush=True)
except Exception as e:
    print("workload: python-error=%r" % (e,), flush=True)
PY
# A distinctive status: the harness checks it arrives as WorkloadExited and on the console.
exit 7
