#!/usr/bin/env bash
# Debian packages the tests use: chromium (browser tests) and dataset-fashion-mnist (Fashion-MNIST's
# offline source). Installed only when missing, with one `apt-get update`; needs root (dev and CI
# machines run as root). Without them, only the tests that need them fail, each saying why.
set -u
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing Debian packages (${need[*]}) and cannot apt-get install them here" >&2
  exit 0
fi
echo "installing ${need[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null) \
  || echo "apt-get install ${need[*]} failed: tests that need them will fail" >&2
