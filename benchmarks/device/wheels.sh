# Sourced by the *_pack.sh scripts: py312_wheels DIR SPEC... downloads the wheels (no dependencies) of
# the GPU machine's Python 3.12 on x86-64 Linux into DIR, whatever this machine's Python is.
py312_wheels() {
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
