#!/usr/bin/env bash
# Installs the Debian packages the test tiers and the demo use, when they are missing:
# Prometheus (the real one the e2e tier and the demo scrape with), Lua (Argo CD health checks), openssl (certs),
# mmdebstrap and umoci (images without Docker: `make images` and tests/integration/test_images.py).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v lua5.4 >/dev/null 2>&1 || need+=(lua5.4)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
# The prometheus package would start a system service; the project starts its own on loopback instead.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
