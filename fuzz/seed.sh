#!/usr/bin/env bash
# Writes the seed corpora, fuzz/corpus/<target>/, from the wire test vectors and from
# what the library encodes (examples/seed.rs). Idempotent: files are named by hash.
set -euo pipefail
cd "$(dirname "$0")"
cargo run --quiet --example seed
for d in corpus/*/; do
    printf '%-22s %3d seeds\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)"
done
