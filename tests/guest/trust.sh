#!/bin/sh
# Runtimes trusting the VM CA through their own default stores: Java's HttpClient (JKS
# cacerts) with the agent's environment and under env -i, Python requests whose certifi is a
# private copy of the roots (/opt/venv, as pip installs it) under env -i, and curl under
# env -i. Under env -i nothing names a CA file or a proxy: the transparent capture carries
# the connection. Prints findings for the test; never decides pass/fail itself.
# `trust.sh systemd` (from sluice-trust.service): print to the console, power off at the end.
if [ "$1" = systemd ]; then exec >/dev/console 2>&1; fi
echo "workload: root=$(awk '$2 == "/" { print $4 }' /proc/mounts | tail -1 | cut -d, -f1)"
JAVA="java -XX:-UsePerfData"
JP=/usr/lib/jvm/java-17-openjdk-amd64/bin
start=$(date +%s)
PATH="$PATH:$JP" $JAVA /run/sluice/Get.java https://api.example.com/v1/java-env java-env 2>&1 |
  grep -v '^Picked up JAVA_TOOL_OPTIONS'
echo "workload: java-env-secs=$(( $(date +%s) - start ))"
start=$(date +%s)
env -i API_KEY="$API_KEY" PATH="/usr/bin:/bin:$JP" $JAVA /run/sluice/Get.java \
  https://api.example.com/v1/java-envi java-envi 2>&1
echo "workload: java-envi-secs=$(( $(date +%s) - start ))"
env -i API_KEY="$API_KEY" /usr/bin/python3 - <<'PY'
import os, sys
sys.path.insert(0, "/opt/venv/lib/python3.11/site-packages")
def line(s): print("workload: " + s, flush=True)
try:
    import certifi, requests
    line("certifi where=%s" % certifi.where())
    r = requests.get("https://api.example.com/v1/certifi-envi", timeout=120,
                     headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
    line("certifi-envi status=%d out=%s" % (r.status_code, r.text.strip()))
except Exception as e:
    line("certifi-envi error=%r" % (e,))
PY
out=$(env -i /usr/bin/curl -sS --noproxy '*' --max-time 120 --retry 20 --retry-connrefused \
  -H "Authorization: Bearer $API_KEY" https://api.example.com/v1/curl-envi 2>&1)
echo "workload: curl-envi=$? out=$out"
echo "workload: done"
if [ "$1" = systemd ]; then systemctl --no-block poweroff; fi
