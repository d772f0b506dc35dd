#!/usr/bin/env bash
# Builds the local cluster's components from the Go module proxy, once, into a cache that outlives clones:
#   $WATTKEEPER_CACHE/bin/<component>-<version>/
# A second run finds them there and returns in well under a second.
# Usage: hack/build-tools.sh [k8s] [etcd] [kwok] [helm] [prometheus-operator] [prometheus]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"
cache=${WATTKEEPER_CACHE:-$HOME/.cache/wattkeeper}
export CGO_ENABLED=0 GOFLAGS=-mod=mod
what=("$@"); [ ${#what[@]} -gt 0 ] || what=(k8s etcd kwok helm prometheus-operator prometheus)

# Prints a progress line every 40 packages that go build compiles; a cold build compiles a few thousand.
progress() {
  local label=$1 total=$2 n=0 start=$SECONDS
  while IFS= read -r line; do
    case "$line" in
      *.go:*|*error*|*cannot*|*undefined*) echo "$line" >&2 ;;
      *) n=$((n + 1)); if (( n % 40 == 0 )); then
           printf '  %s: %d/%d packages compiled, %ds\n' "$label" "$n" "$total" $((SECONDS - start)); fi ;;
    esac
  done
}

build_k8s() {
  local out="$cache/bin/k8s-$KUBE_VERSION"
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ] && [ -x "$out/kubectl" ]; then
    echo "kubernetes $KUBE_VERSION: cached in $out"; return; fi
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local vpkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version
  local ld="-s -w"
  for p in $vpkg $cpkg; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  local cmds=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
              k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  cd "$here/k8s"
  echo "kubernetes $KUBE_VERSION: downloading modules..."
  go mod download
  local total; total=$(go list -deps "${cmds[@]}" | wc -l)
  echo "kubernetes $KUBE_VERSION: building ${#cmds[@]} commands ($total packages; a cold build takes 20-30 minutes on 2 cores)"
  mkdir -p "$out.tmp"
  go build -v -trimpath -ldflags "$ld" -o "$out.tmp/" "${cmds[@]}" 2>&1 | progress kubernetes "$total"
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "kubernetes $KUBE_VERSION: built into $out"
}

build_etcd() {
  local out="$cache/bin/etcd-$ETCD_VERSION"
  if [ -x "$out/etcd" ]; then echo "etcd $ETCD_VERSION: cached in $out"; return; fi
  cd "$here/etcd"
  go mod download
  local total; total=$(go list -deps . | wc -l)
  echo "etcd $ETCD_VERSION: building ($total packages)"
  mkdir -p "$out.tmp"
  go build -v -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" . 2>&1 | progress etcd "$total"
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "etcd $ETCD_VERSION: built into $out"
}

# KWOK and Helm carry no replace directives, so go install builds them straight from the proxy.
go_install() {
  local name=$1 version=$2; shift 2
  local out="$cache/bin/$name-$version"
  local have=1; for c in "$@"; do [ -x "$out/${c##*/}" ] || have=0; done
  if [ $have = 1 ]; then echo "$name $version: cached in $out"; return; fi
  echo "$name $version: building with go install (a few minutes cold)"
  mkdir -p "$out.tmp"
  local cmd
  for cmd in "$@"; do
    GOBIN="$out.tmp" go install -v -trimpath -ldflags "-s -w" "$cmd@$version" 2>&1 | progress "$name" 0
  done
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "$name $version: built into $out"
}

# prometheus-operator replaces its own apis and client submodules with local folders, so it builds through a
# wrapper module (hack/prometheus-operator) that requires their published builds; ldflags as its Makefile's.
# Its CRDs come with the module, in example/prometheus-operator-crd/, and are copied beside the binary.
build_prometheus_operator() {
  local v=$PROMETHEUS_OPERATOR_VERSION out="$cache/bin/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  if [ -x "$out/operator" ] && [ -d "$out/crds" ]; then echo "prometheus-operator $v: cached in $out"; return; fi
  local mod=github.com/prometheus-operator/prometheus-operator
  cd "$here/prometheus-operator"
  go mod download
  local total; total=$(go list -deps "$mod/cmd/operator" | wc -l)
  echo "prometheus-operator $v: building cmd/operator ($total packages; a few minutes cold)"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp/crds"
  go build -v -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=${v#v}" \
    -o "$out.tmp/operator" "$mod/cmd/operator" 2>&1 | progress prometheus-operator "$total"
  cp "$(go list -m -f '{{.Dir}}' "$mod")"/example/prometheus-operator-crd/*.yaml "$out.tmp/crds/"
  chmod -R u+w "$out.tmp"
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "prometheus-operator $v: built into $out"
}

# Debian's prometheus package lacks kubernetes_sd_configs, which prometheus-operator's configurations use; the
# kube-prometheus-stack test runs this one. The module version (v0.3XX.Y for v3.XX.Y) is pinned in the wrapper.
build_prometheus() {
  local v=$PROMETHEUS_VERSION out="$cache/bin/prometheus-$PROMETHEUS_VERSION"
  if [ -x "$out/prometheus" ]; then echo "prometheus $v: cached in $out"; return; fi
  local cmd=github.com/prometheus/prometheus/cmd/prometheus
  cd "$here/prometheus-server"
  go mod download
  local total; total=$(go list -deps "$cmd" | wc -l)
  echo "prometheus $v: building cmd/prometheus ($total packages; several minutes cold)"
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  go build -v -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=${v#v}" \
    -o "$out.tmp/prometheus" "$cmd" 2>&1 | progress prometheus "$total"
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "prometheus $v: built into $out"
}

for w in "${what[@]}"; do
  case $w in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    kwok) go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    prometheus-operator) build_prometheus_operator ;;
    prometheus) build_prometheus ;;
    *) echo "unknown component: $w" >&2; exit 2 ;;
  esac
done
