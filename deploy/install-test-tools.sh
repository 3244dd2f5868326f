#!/usr/bin/env bash
# What the deploy, dashboard and Prometheus tests need beyond the virtualenv, on Debian:
# prometheus, prometheus-alertmanager, chromium, chromedriver and redis-sentinel from apt, kustomize
# built with Go into a GOBIN kept between runs (~/.cache/signwatch/gobin; tests/unit/test_deploy.py
# looks there). Idempotent.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)  # with amtool
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)  # the Redis failover test
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
gobin="${XDG_CACHE_HOME:-$HOME/.cache}/signwatch/gobin"
if [ ! -x "$gobin/kustomize" ]; then
  command -v go >/dev/null 2>&1 || { echo "Go is needed to build kustomize" >&2; exit 1; }
  # v5.7.1: later releases need a newer Go than Debian's machines have
  GOBIN="$gobin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
fi
