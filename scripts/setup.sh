#!/usr/bin/env bash
# Installs the Debian packages ghnq needs that are missing (as root, or through sudo).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
GHNQ_PACKAGES=(build-essential cmake pkg-config libeigen3-dev libxtensor-dev xtl-dev libxsimd-dev libtbb-dev
               catch2 nlohmann-json3-dev zlib1g-dev libbenchmark-dev dataset-fashion-mnist)
missing=()
for p in "${GHNQ_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "ghnq setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
    { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
