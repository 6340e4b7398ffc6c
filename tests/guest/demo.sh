#!/bin/sh
# Demo workload: one authenticated API call with the placeholder, as any program would make it.
echo "demo: the guest's environment has API_KEY=$API_KEY"
echo "demo: HTTPS_PROXY=$HTTPS_PROXY SSL_CERT_FILE=$SSL_CERT_FILE"
curl -sS -v --max-time 120 -H "Authorization: Bearer $API_KEY" \
  https://api.example.com/v1/demo 2>&1 | sed 's/^/demo| /'
