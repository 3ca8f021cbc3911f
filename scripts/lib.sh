# Shared helpers for the scripts in this folder. Source it; do not run it.

# Installs the wasm32-wasip2 Rust target when it is missing: every task is built for it.
ensure_wasm_target() {
    if ! command -v rustup >/dev/null 2>&1; then
        echo "error: rustup is needed to add the wasm32-wasip2 target; install Rust with rustup" >&2
        return 1
    fi
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        echo "==> installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

# Builds every example task as a component under target/wasm32-wasip2/guest/.
build_examples() {
    local packages=()
    for manifest in examples/*/Cargo.toml; do
        packages+=(-p "$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n 1)")
    done
    echo "==> building $((${#packages[@]} / 2)) example tasks for wasm32-wasip2"
    cargo build --quiet --target wasm32-wasip2 --profile guest "${packages[@]}"
}

# Installs redis-server from Debian's packages when it is missing: the queue tests and the
# demo start private servers of their own (never the one on port 6379).
ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
        return 0
    fi
    # curl is for the README's HTTP walkthrough, which a test runs as written.
    echo "==> installing redis-server and curl"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq redis-server curl >/dev/null
    # The package starts a system service on 6379 on some systems; we do not use it.
}

# Prints a free TCP port on the loopback interface.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
