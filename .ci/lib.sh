# Helpers sourced by the CI scripts (.ci/schemathesis, .ci/localstripe).

# pip_tool VENV PACKAGE VERSION: a virtual environment at VENV holding PACKAGE==VERSION from PyPI, made or
# brought to that version when it lacks it.
pip_tool() {
  local venv=$1 pkg=$2 version=$3
  if ! "$venv/bin/pip" show "$pkg" 2>/dev/null | grep -qx "Version: $version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg==$version"
  fi
}

# A free loopback TCP port.
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
