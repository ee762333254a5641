# Sourced by ./test and ./demo: installs what building holdfast needs on
# Debian 12 (once; later runs find it installed) and sets the build env.
set -euo pipefail

need=(clang libclang-dev librocksdb-dev pkg-config fuse3 libfuse3-dev curl nftables iproute2 rsync sqlite3 git python3)
missing=()
for p in "${need[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Builds live outside the clone so that runs on the same machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
# Link Debian's RocksDB 7.8.3 instead of compiling it (see ARCHITECTURE.md).
export ROCKSDB_LIB_DIR="${ROCKSDB_LIB_DIR:-/usr/lib/$(gcc -dumpmachine)}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
