#!/bin/sh
# exec-mode workload on the Debian root: the AWS CLI and boto3 sign with the placeholder
# credentials the agent put in the environment; the broker re-signs with the real ones.
# The upstream (api.example.com) answers with a non-AWS body, so the clients report a parse
# error: the test checks what the upstream received, not the clients' view.
echo "workload: aws-env key=$AWS_ACCESS_KEY_ID secret=$AWS_SECRET_ACCESS_KEY token=$AWS_SESSION_TOKEN"
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_PAGER=""
out=$(timeout 300 aws --endpoint-url https://api.example.com/ sts get-caller-identity 2>&1)
echo "workload: awscli-exit=$? $(echo "$out" | head -c 300 | tr '\n' ' ')"
python3 - <<'PY'
import boto3
c = boto3.client("sts", endpoint_url="https://api.example.com/", region_name="us-east-1")
try:
    c.get_caller_identity()
    print("workload: boto3-ok", flush=True)
except Exception as e:
    print("workload: boto3-error=%s %s" % (type(e).__name__, str(e)[:200]), flush=True)
PY
echo "workload: done"
