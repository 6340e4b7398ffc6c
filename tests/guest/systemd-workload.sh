#!/bin/sh
# systemd-mode workload (run by sluice-e2e.service): the environment comes from the
# DefaultEnvironment= drop-in the agent installed, not from this script.
exec >/dev/console 2>&1
echo "workload: systemd API_KEY=$API_KEY"
out=$(curl -sS --max-time 120 --retry 20 --retry-connrefused --retry-delay 1 \
  -H "Authorization: Bearer $API_KEY" https://api.example.com/v1/systemd 2>&1)
echo "workload: curl-exit=$? out=$out"
# Transparent capture in systemd mode too: no proxy or CA variables at all.
out=$(env -i /usr/bin/curl -sS --noproxy '*' --max-time 120 --retry 20 --retry-connrefused \
  --retry-delay 1 -H "Authorization: Bearer $API_KEY" https://api.example.com/v1/systemd-envi 2>&1)
echo "workload: envi-curl-exit=$? out=$out"
systemctl --no-block poweroff
