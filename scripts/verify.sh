#!/usr/bin/env bash
# verify.sh: formatting, vet and stale generated code. Exits non-zero on any
# finding. The first run builds sqlc (tools/go.mod), which takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "verify: gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

echo "verify: go vet"
go vet ./...

echo "verify: sqlc diff"
# sqlc diff prints the difference and exits 1 when the generated code is
# stale: run scripts/generate.sh and commit the result.
go -C tools tool sqlc -f ../sqlc.yaml diff

echo "verify: ok"
