#!/bin/sh
# exec-mode workload: runs host-broker's kernel AF_VSOCK transport test (host-broker/tests/
# vsock.rs, copied in as /run/sluice/vsock-test) inside this guest, whose kernel has the
# vsock_loopback transport: the broker binds its AF_VSOCK listener, the test connects to CID 1
# and the broker must identify the VM by that peer CID. Prints the outcome for the test.
mods=$(awk '$1 ~ /vsock/ { printf "%s ", $1 }' /proc/modules)
echo "workload: vsock modules: $mods"
out=$(/run/sluice/vsock-test --ignored --exact control_stream_over_af_vsock_loopback \
  --test-threads=1 2>&1)
rc=$?
echo "$out" | sed 's/^/workload: test: /'
echo "workload: vsock-test rc=$rc"
echo "workload: done"
