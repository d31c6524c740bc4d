# Sourced by the project's scripts: puts Node.js 24 first on PATH.
# imageio-nbd itself runs on Node.js 22 or later (Node 20 cannot connect to imageio's abstract
# unix socket), and the installed command brings its own Node 24 (package.json's
# optionalDependencies). The project's own scripts (tests, demo, bench, CI) run on that same
# Node 24: when the `node` on PATH is older, the official binary is installed from the npm
# registry (package node-linux-<arch>, no install script) into .tools/ once.
# NODE_PKG_VERSION is the version package.json's optionalDependencies name (a test checks).
NODE_WANT_MAJOR=24
NODE_PKG_VERSION=24.22.3
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$_major" -lt "$NODE_WANT_MAJOR" ]; then
  case "$(uname -m)" in
    x86_64) _arch=x64 ;;
    aarch64) _arch=arm64 ;;
    *) echo "the npm registry has no Node.js $NODE_WANT_MAJOR package for $(uname -m): install Node.js $NODE_WANT_MAJOR yourself" >&2; return 1 ;;
  esac
  _tools="$_root/.tools"
  # A .tools that cannot hold a directory (a dangling or looping link): use the user's cache.
  if ! mkdir -p "$_tools/node" 2>/dev/null; then _tools="${XDG_CACHE_HOME:-$HOME/.cache}/imageio-nbd"; fi
  _bin="$_tools/node/node_modules/node-linux-$_arch/bin"
  if [ ! -x "$_bin/node" ] || [ "$("$_bin/node" -p 'process.versions.node')" != "$NODE_PKG_VERSION" ]; then
    echo "installing Node.js $NODE_PKG_VERSION into $_tools/node (found $(node -v 2>/dev/null || echo none))" >&2
    command -v npm >/dev/null || { echo "npm is needed to install Node.js $NODE_WANT_MAJOR: apt-get install npm, or install Node.js $NODE_WANT_MAJOR" >&2; return 1; }
    mkdir -p "$_tools/node" || return 1
    npm install --prefix "$_tools/node" --no-save --no-audit --no-fund --no-package-lock \
      "node-linux-$_arch@$NODE_PKG_VERSION" >&2 || return 1
  fi
  export PATH="$_bin:$PATH"
  hash -r
fi
unset _root _major _arch _bin _tools
