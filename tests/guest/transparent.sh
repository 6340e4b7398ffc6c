#!/bin/sh
# Transparent egress on the Debian root: clients with no proxy or CA variables at all
# (env -i), Node (which ignores proxy variables), DNS decided by the broker, raw TCP, refused
# destinations and UDP. Each finding is printed with a prefix the test matches; this script
# never decides pass/fail itself.
echo "workload: ifaces=$(ls /sys/class/net | tr '\n' ' ')"
nics=""
for i in /sys/class/net/*; do [ -e "$i/device" ] && nics="$nics $(basename "$i")"; done
echo "workload: nics=[$nics]"
echo "workload: resolv=$(grep -v '^#' /etc/resolv.conf | tr '\n' ' ')"
out=$(getent hosts api.example.com); echo "workload: getent-api=$? $out"
out=$(getent hosts denied.example.com); echo "workload: getent-denied=$? $out"
out=$(env -i /usr/bin/curl -sS --noproxy '*' --max-time 60 \
  -H "Authorization: Bearer $API_KEY" https://api.example.com/v1/envi-curl 2>&1)
echo "workload: envi-curl=$? out=$out"
env -i API_KEY="$API_KEY" /usr/bin/python3 - <<'PY'
import os, socket, time, urllib.request
def line(s): print("workload: " + s, flush=True)
try:
    req = urllib.request.Request("https://api.example.com/v1/envi-urllib",
                                 headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
    with urllib.request.urlopen(req, timeout=60) as r:
        line("envi-urllib status=%d out=%s" % (r.status, r.read().decode().strip()))
except Exception as e:
    line("envi-urllib error=%r" % (e,))
try:
    s = socket.create_connection(("db.example.com", 5432), timeout=30)
    s.sendall(b"ping-raw\n")
    line("raw=%r" % s.recv(100))
    s.close()
except OSError as e:
    line("raw error=%s" % e)
for name, host, port in [("denied-port", "api.example.com", 5433),
                         ("metadata", "169.254.169.254", 80),
                         ("v6-literal", "2001:db8::1", 443)]:
    t = time.time()
    try:
        s = socket.create_connection((host, port), timeout=30)
        s.settimeout(30)
        d = s.recv(100)
        line("%s closed=%r after=%.1fs" % (name, d, time.time() - t))
    except OSError as e:
        line("%s error=%s after=%.1fs" % (name, e, time.time() - t))
# DNS to a server address that is not in resolv.conf is answered by the agent too.
def dns_query(name, server):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.settimeout(10)
    d.sendto(q, (server, 53))
    r, peer = d.recvfrom(512)
    return "rcode=%d answers=%d from=%s" % (r[3] & 15, int.from_bytes(r[6:8], "big"), peer[0])
for name in ["api.example.com", "denied.example.com"]:
    try:
        line("udp-dns %s %s" % (name, dns_query(name, "192.0.2.53")))
    except OSError as e:
        line("udp-dns %s error=%s" % (name, e))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
try:
    u.sendto(b"udp-probe", ("203.0.113.7", 9999))
    u.recvfrom(100)
    line("udp=reply")
except socket.timeout:
    line("udp=no-reply")
except OSError as e:
    line("udp=error %s" % e)
PY
env -i API_KEY="$API_KEY" /usr/bin/node -e '
const https = require("https");
const auth = { Authorization: "Bearer " + process.env.API_KEY };
https.get("https://api.example.com/v1/node-https", { headers: auth }, (r) => {
  let b = "";
  r.on("data", (d) => (b += d));
  r.on("end", () => { console.log("workload: node-https status=" + r.statusCode + " out=" + b.trim()); viaFetch(); });
}).on("error", (e) => { console.log("workload: node-https error=" + e.message); viaFetch(); });
function viaFetch() {
  fetch("https://api.example.com/v1/node-fetch", { headers: auth })
    .then(async (r) => console.log("workload: node-fetch status=" + r.status + " out=" + (await r.text()).trim()))
    .catch((e) => console.log("workload: node-fetch error=" + e.message + " " + (e.cause || "")));
}
' 2>&1
echo "workload: done"
