#!/usr/bin/env bash
# Issue 13's p99: the same load on a vault on disk and on one in tmpfs (no disk sync stalls), alternated.
# Needs wrk; prints bench/serve_load.py's tables (run JSON in /tmp/p99-*.json); the vaults use the default KDF.
set -euo pipefail
cd "$(dirname "$0")/.."
K=.venv/bin/kmscli
for d in "${TMPDIR:-/tmp}/kmscli-p99-disk" /dev/shm/kmscli-p99-tmpfs; do
  rm -rf "$d"; mkdir -m 700 "$d"
  KMSCLI_VAULT=$d/vault.kms KMSCLI_PASSPHRASE=benchpw $K init >/dev/null 2>&1   # default KDF: serve unlocks once
done
creds() { KMSCLI_VAULT=$1/vault.kms KMSCLI_PASSPHRASE=benchpw $K credentials create bench --json; }
cd_json=$(creds "${TMPDIR:-/tmp}/kmscli-p99-disk"); ct_json=$(creds /dev/shm/kmscli-p99-tmpfs)
run() { # $1 name, $2 dir, $3 json
  export BENCH_ACCESS_KEY=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["AccessKey"]["AccessKeyId"])' "$3")
  export BENCH_SECRET_KEY=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["AccessKey"]["SecretAccessKey"])' "$3")
  KMSCLI_VAULT=$2/vault.kms KMSCLI_PASSPHRASE=benchpw .venv/bin/python bench/serve_load.py \
    --target "$1=.venv/bin/kmscli serve --port 0" --baseline "$1" -c 16 -d 10 --reps 1 --json "${TMPDIR:-/tmp}/p99-$1-$4.json"
}
for i in 1 2 3; do   # alternated, as the machine drifts
  run disk "${TMPDIR:-/tmp}/kmscli-p99-disk" "$cd_json" "$i"
  run tmpfs /dev/shm/kmscli-p99-tmpfs "$ct_json" "$i"
done
