#!/bin/sh
# Containment checks on the Debian root. Each finding is printed with a prefix the test
# matches; this script never decides pass/fail itself.
echo "workload: ifaces=$(ls /sys/class/net | tr '\n' ' ')"
nics=""
for i in /sys/class/net/*; do [ -e "$i/device" ] && nics="$nics $(basename "$i")"; done
echo "workload: nics=[$nics]"
python3 - <<'PY'
import socket
# Captured by the agent and refused by the broker: the connection closes without a byte.
for host, port in [("1.1.1.1", 443), ("10.0.2.2", 80), ("169.254.169.254", 80)]:
    try:
        s = socket.create_connection((host, port), timeout=30)
        s.settimeout(30)
        data = s.recv(100)
        print("workload: direct %s:%d closed=%r" % (host, port, data), flush=True)
    except OSError as e:
        print("workload: direct %s:%d failed: %s" % (host, port, e), flush=True)
PY
echo "workload: -- denied host"
curl -sS -v --max-time 60 https://denied.example.com/ 2>&1 | sed 's/^/denied| /'
echo "workload: -- placeholder to a host outside the credential's hosts"
curl -sS -v --max-time 60 -H "Authorization: Bearer $API_KEY" \
  https://other.example.com/v1/wrong-host 2>&1 | sed 's/^/wrong| /'
echo "workload: -- upstream echoes the Authorization it received"
curl -sS -D - --max-time 60 -H "Authorization: Bearer $API_KEY" \
  https://api.example.com/v1/echo-auth 2>&1 | sed 's/^/echo| /'
echo "workload: done"
