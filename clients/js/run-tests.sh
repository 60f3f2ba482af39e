#!/usr/bin/env bash
# The JavaScript client's CI: install the dev dependency (typescript, for the
# declarations' type check), type-check, build the agent_server example the
# tests run against, and run `node --test` (about 110 s, 60 of them the
# random-cut test; CUT_TEST_MS shortens it). Needs Node 20+ and
# redis-server (the two-node test starts its own on a free port).
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
npx tsc --noEmit -p .
(cd ../.. && cargo build --quiet --example agent_server)
node_major=$(node -p 'process.versions.node.split(".")[0]')
flags=()
if [ "$node_major" -lt 22 ]; then flags+=(--experimental-websocket); fi
node "${flags[@]}" --test --test-concurrency=1 test/*.test.js
