#!/usr/bin/env bash
# Installs what dsq needs to build and test on Debian bookworm (apt only), skipping the
# package index refresh when everything is already present.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libpcre2-dev nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libgtest-dev libbenchmark-dev libyaml-dev
  time                       # /usr/bin/time: peak-RSS checks in the quantizer tests
  clang libclang-rt-14-dev   # libFuzzer + sanitizers for the fuzz targets
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: all build dependencies present"
