#!/usr/bin/env bash
# Installs every Debian (bookworm) package the project needs to build, test,
# lint and benchmark. Idempotent and non-interactive; prints nothing when all
# packages are already installed. Called by scripts/test.sh and .ci/run.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates
  libnats-dev nats-server prometheus-cpp-dev
  libfmt-dev libspdlog-dev nlohmann-json3-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-format clang-tidy clang-14 libclang-rt-14-dev
  curl procps iproute2
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup.sh: apt-get not found; install these Debian bookworm packages: ${missing[*]}" >&2
  exit 1
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    # Ask for a password only when someone can type it (not in CI).
    if [[ -t 0 ]]; then sudo=(sudo); else sudo=(sudo -n); fi
  else
    echo "setup.sh: not root and no sudo; install as root: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup.sh: done"
