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
