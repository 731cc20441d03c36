#!/usr/bin/env bash
# Browser tests drive Debian's chromium; install it when missing (we are root on dev and CI machines).
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "chromium missing and not root: browser tests will fail" >&2; exit 0; fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "could not install chromium: browser tests will fail" >&2
