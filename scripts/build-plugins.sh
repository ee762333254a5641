#!/usr/bin/env bash
# Builds every Wasm plugin into "$CARGO_TARGET_DIR/plugins/NAME.wasm" (or
# target/plugins/ without CARGO_TARGET_DIR), where the plugin host's tests and
# the benchmark look for them:
#   - the Rust SDK, bundled plugins and test plugins (plugins/, wasm32-wasip2);
#   - the JavaScript example (componentize-js from npm) and the Python example
#     (componentize-py from PyPI), unless HOLDFAST_SKIP_EXAMPLES=1.
# The JS and Python toolchains are installed (pinned) under
# "$CARGO_TARGET_DIR/plugin-tools" on first use.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$target/plugins"
tools="$target/plugin-tools"
mkdir -p "$out"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "build-plugins: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2 >&2
fi
CARGO_TARGET_DIR="$target" cargo build --release --locked --target wasm32-wasip2 \
    --manifest-path "$root/plugins/Cargo.toml"
for f in "$target"/wasm32-wasip2/release/hf_*.wasm; do
    name="$(basename "$f" .wasm)"
    name="${name#hf_}"
    cp "$f" "$out/${name//_/-}.wasm"
done

if [ "${HOLDFAST_SKIP_EXAMPLES:-0}" = 1 ]; then
    echo "build-plugins: HOLDFAST_SKIP_EXAMPLES=1, skipping the JavaScript and Python examples" >&2
    exit 0
fi

# Rebuilds $2 from the sources under $1 only when one of them is newer.
stale() {
    [ ! -f "$2" ] || [ -n "$(find "$1" "$root/wit" -newer "$2" -type f \( -name '*.js' -o -name '*.py' -o -name '*.json' -o -name '*.txt' -o -name '*.wit' \) -print -quit)" ]
}

# JavaScript: componentize-js (StarlingMonkey). With every WASI feature
# disabled the component imports nothing but holdfast's own interfaces.
js="$root/plugins/examples/js-router"
if stale "$js" "$out/js-router.wasm"; then
    if command -v npm >/dev/null 2>&1; then
        mkdir -p "$tools/js"
        cp "$js/package.json" "$js/package-lock.json" "$tools/js/"
        # `npm ci` refuses this lock file (npm drops optional platform packages
        # from it), so `npm install`, which still follows the pinned versions.
        (cd "$tools/js" && npm install --no-audit --no-fund --loglevel=error >&2)
        # Relative paths: the tool runs as Wasm and sees only the folder
        # it is started in.
        (cd "$root" && "$tools/js/node_modules/.bin/componentize-js" \
            plugins/examples/js-router/router.js --wit wit --world-name router \
            --disable stdio random clocks http fetch-event \
            -o "$out/js-router.wasm" >&2)
    else
        echo "build-plugins: npm not found; skipping the JavaScript example (install Node.js 18+ and npm)" >&2
    fi
fi

# Python: componentize-py (CPython). --stub-wasi links every WASI import to
# a trapping stub inside the component, so it needs no grant.
py="$root/plugins/examples/py-router"
if stale "$py" "$out/py-router.wasm"; then
    if command -v python3 >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1; then
        if [ ! -x "$tools/py/bin/componentize-py" ]; then
            python3 -m venv "$tools/py"
            "$tools/py/bin/pip" install --quiet -r "$py/requirements.txt" >&2
        fi
        (cd "$py" && PYTHONDONTWRITEBYTECODE=1 "$tools/py/bin/componentize-py" -d "$root/wit" -w router \
            componentize --stub-wasi app -o "$out/py-router.wasm" >&2)
    else
        echo "build-plugins: python3 with venv not found; skipping the Python example (apt-get install python3-venv)" >&2
    fi
fi
echo "build-plugins: plugins in $out" >&2
