#!/usr/bin/env bash
# Static checks for every Go module of the repository: go vet (for the
# host and for each system of CROSS_GOOS), gofmt, staticcheck and
# govulncheck. The two tools are installed into $(go env GOPATH)/bin (or
# GOBIN) when missing and called by full path.
#
#   scripts/static.sh                 all modules
#   GOVULNDB=file:///path scripts/static.sh   a local vulnerability database
#
# govulncheck needs https://vuln.go.dev (or GOVULNDB); when the database
# cannot be reached the check is reported as skipped, not passed, and the
# script does not fail for it. Any finding fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS=${GOFLAGS:--buildvcs=false}

# staticcheck releases follow Go releases: 2025.1 (v0.6.x) knows Go 1.24,
# v0.7+ Go 1.25 and later. govulncheck v1.1.4 is the fallback when @latest
# cannot be built from the module proxy.
STATICCHECK_VERSION=${STATICCHECK_VERSION:-latest}
GOVULNCHECK_VERSIONS=${GOVULNCHECK_VERSIONS:-"latest v1.1.4"}
# Systems every module is vetted for, the host's own once: it catches code
# that compiles on some only (a field whose type differs, a missing build tag).
CROSS_GOOS=${CROSS_GOOS:-"linux darwin windows freebsd dragonfly"}

bindir=$(go env GOBIN)
[ -n "$bindir" ] || bindir="$(go env GOPATH)/bin"
staticcheck="$bindir/staticcheck"
govulncheck="$bindir/govulncheck"

if [ ! -x "$staticcheck" ]; then
  echo "installing staticcheck@$STATICCHECK_VERSION"
  (cd / && GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION")
fi
if [ ! -x "$govulncheck" ]; then
  for v in $GOVULNCHECK_VERSIONS; do
    echo "installing govulncheck@$v"
    if (cd / && GOFLAGS= go install "golang.org/x/vuln/cmd/govulncheck@$v"); then break; fi
  done
fi

hostos=$(go env GOOS)
fail=0
report() { printf '%-14s %-28s %s\n' "$1" "$2" "$3"; }

mapfile -t modules < <(find . -name go.mod -not -path '*/node_modules/*' -printf '%h\n' | sort)
for m in "${modules[@]}"; do
  if out=$(cd "$m" && go vet ./... 2>&1); then
    report vet "$m" ok
  else
    report vet "$m" FAIL; echo "$out"; fail=1
  fi

  out=$(cd "$m" && gofmt -l $(git ls-files --cached --others --exclude-standard '*.go' | grep -v '/testdata/') 2>&1 || true)
  # gofmt -l in a module lists files of nested modules too; that is harmless.
  if [ -z "$out" ]; then
    report gofmt "$m" ok
  else
    report gofmt "$m" FAIL; echo "$out"; fail=1
  fi

  # Every package, tests included, must compile for each system the
  # library supports; go vet type-checks without linking, so no toolchain
  # for the target is needed.
  for goos in $CROSS_GOOS; do
    [ "$goos" != "$hostos" ] || continue # vetted above
    if out=$(cd "$m" && GOOS=$goos GOARCH=amd64 CGO_ENABLED=0 go vet ./... 2>&1); then
      report "vet $goos" "$m" ok
    else
      report "vet $goos" "$m" FAIL; echo "$out"; fail=1
    fi
  done

  if out=$(cd "$m" && "$staticcheck" ./... 2>&1); then
    report staticcheck "$m" ok
  else
    report staticcheck "$m" FAIL; echo "$out"; fail=1
  fi

  if [ -x "$govulncheck" ]; then
    set +e
    out=$(cd "$m" && "$govulncheck" ./... 2>&1)
    rc=$?
    set -e
    if [ $rc -eq 0 ]; then
      report govulncheck "$m" ok
    elif grep -q 'fetching vulnerabilities' <<<"$out"; then
      report govulncheck "$m" "SKIPPED (vulnerability database unreachable; set GOVULNDB)"
    else
      report govulncheck "$m" FAIL; echo "$out"; fail=1
    fi
  else
    report govulncheck "$m" "SKIPPED (could not install)"
  fi
done
exit $fail
