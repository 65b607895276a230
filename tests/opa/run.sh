#!/usr/bin/env bash
# The shipped policies under the real OPA engine (see check.py): installs OPA's Go engine
# from PyPI's opa-golib-python-bindings, pinned and hash-checked, into a folder of its own,
# builds guestgate, and runs the differential check. Used by .ci/run; a policy author runs
# it the same way: `bash tests/opa/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=0.4.4
WHEEL=opa_golib_python_bindings-${VERSION}-py3-none-manylinux_2_34_x86_64.whl
SHA256=d411c901e14b8c7c3023e23e4a944f4cf429c1d31baf80e959e57d11efbfd24a
CACHE=${GUESTGATE_OPA_CACHE:-target/opa}
mkdir -p "$CACHE"
if [ ! -f "$CACHE/site/opa_bindings/engine.py" ]; then
  # The wheel declares Python >= 3.14; its library and ctypes wrapper load on older
  # Pythons alike, so the requirement is ignored and the wheel unpacked by hand.
  python3 -m pip download --quiet --no-deps --ignore-requires-python \
    "opa-golib-python-bindings==${VERSION}" -d "$CACHE"
  echo "${SHA256}  $CACHE/$WHEEL" | sha256sum -c --quiet -
  rm -rf "$CACHE/site"
  python3 -m zipfile -e "$CACHE/$WHEEL" "$CACHE/site"
fi
cargo build --quiet --bin guestgate
python3 tests/opa/check.py target/debug/guestgate "$CACHE/site"
