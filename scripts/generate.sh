#!/usr/bin/env bash
# generate.sh: regenerate the PostgreSQL driver's query code from queries/
# and migrations/ with sqlc (pinned in tools/go.mod, kept out of the
# library's go.mod). The first run builds sqlc, which takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
go -C tools tool sqlc -f ../sqlc.yaml generate
