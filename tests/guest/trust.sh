#!/bin/sh
# The client matrix: every client runs twice, once with the workload's environment (the
# agent's proxy and CA variables) and once under `env -i` (nothing names a CA file or a proxy:
# the transparent capture carries the connection and only the runtime's default trust store
# can verify the VM CA). Clients: curl, wget, Debian's python3-requests, httpx with PyPI's
# own certifi (/opt/venv), Node `https`, Java `HttpClient` (Get.java) and a static Go
# net/http binary built on the host (goget). /run/sluice/clients may name a subset.
# Prints one `workload: CLIENT-MODE status=... out=...` line per run for the test; never
# decides pass/fail itself.
# `trust.sh systemd` (from sluice-trust.service): print to the console, power off at the end.
# `trust.sh --one CLIENT NAME URL` runs one client (how the env -i runs re-enter the script).
JP=/usr/lib/jvm/java-17-openjdk-amd64/bin

# client NAME URL: one GET with the placeholder header; prints the result line.
client() {
  c=$1 name=$2 url=$3
  case $c in
    curl)
      # No temporary files: /tmp is read-only on a read-only root.
      out=$(curl -sS --max-time 120 -w '\n%{http_code}' \
        -H "Authorization: Bearer $API_KEY" "$url" 2>&1)
      if [ $? -eq 0 ]; then
        echo "workload: $name status=$(echo "$out" | tail -n1) out=$(echo "$out" | sed '$d')"
      else echo "workload: $name error=$out"; fi ;;
    wget)
      out=$(wget -q -T 120 -t 1 -O - --header="Authorization: Bearer $API_KEY" "$url" 2>&1)
      rc=$?
      if [ $rc -eq 0 ]; then echo "workload: $name status=200 out=$out"
      else echo "workload: $name error=exit $rc $out"; fi ;;
    requests|httpx)
      py=/usr/bin/python3; [ $c = httpx ] && py=/opt/venv/bin/python
      $py - "$c" "$name" "$url" <<'PY'
import os, sys
lib, name, url = sys.argv[1:4]
try:
    mod = __import__(lib)
    r = mod.get(url, timeout=120, headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
    print("workload: %s status=%d out=%s" % (name, r.status_code, r.text.strip()), flush=True)
except Exception as e:
    print("workload: %s error=%r" % (name, e), flush=True)
PY
      ;;
    node)
      node -e '
const [url, name] = process.argv.slice(1);
require("https").get(url, { headers: { Authorization: "Bearer " + process.env.API_KEY } }, (r) => {
  let b = ""; r.on("data", (d) => (b += d));
  r.on("end", () => console.log("workload: " + name + " status=" + r.statusCode + " out=" + b.trim()));
}).on("error", (e) => console.log("workload: " + name + " error=" + e.message));' "$url" "$name" ;;
    java)
      java -XX:-UsePerfData /run/sluice/Get.java "$url" "$name" 2>&1 |
        grep -v '^Picked up JAVA_TOOL_OPTIONS' ;;
    go) /run/sluice/goget "$url" "$name" ;;
    *) echo "workload: $name error=unknown client" ;;
  esac
}

if [ "$1" = --one ]; then shift; client "$@"; exit 0; fi
if [ "$1" = systemd ]; then exec >/dev/console 2>&1; fi
echo "workload: root=$(awk '$2 == "/" { print $4 }' /proc/mounts | tail -1 | cut -d, -f1)"
echo "workload: certifi where=$(env -i /opt/venv/bin/python -c 'import certifi; print(certifi.where())' 2>&1)"
CLIENTS="curl wget requests httpx node java go"
[ -s /run/sluice/clients ] && CLIENTS=$(cat /run/sluice/clients)
for c in $CLIENTS; do
  for mode in env envi; do
    name="$c-$mode" url="https://api.example.com/v1/$c-$mode"
    start=$(date +%s)
    if [ $mode = env ]; then
      PATH="$PATH:$JP" client "$c" "$name" "$url"
    else
      env -i API_KEY="$API_KEY" PATH="/usr/bin:/bin:$JP" HOME=/root \
        /bin/sh "$0" --one "$c" "$name" "$url"
    fi
    echo "workload: $name-secs=$(( $(date +%s) - start ))"
  done
done
echo "workload: done"
if [ "$1" = systemd ]; then systemctl --no-block poweroff; fi
