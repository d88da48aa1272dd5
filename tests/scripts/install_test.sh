#!/usr/bin/env bash
# `cmake --install` into a prefix, a separate CMake project that finds the library with
# find_package(lorafit) and runs a model through it, `lorafit --version` from the prefix, and the
# Debian package made by CPack (its files and dependencies).
#   tests/scripts/install_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
SRC=$1 BUILD=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
check() { if [ "$2" = 0 ]; then passes=$((passes + 1)); echo "ok   $1"; else fails=$((fails + 1)); echo "FAIL $1"; fi; }

cmake --install "$BUILD" --prefix "$T/prefix" > "$T/install.log" 2>&1; check "cmake --install" $?
for f in bin/lorafit include/lorafit/peft.h include/lorafit/train.h lib/cmake/lorafit/lorafitConfig.cmake \
         lib/cmake/lorafit/lorafitTargets.cmake; do
  [ -e "$T/prefix/$f" ]; check "installed $f" $?
done
"$T/prefix/bin/lorafit" --version > "$T/version.txt"; check "installed lorafit --version runs" $?
commit=$(git -C "$SRC" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
grep -q "^lorafit [0-9.]* (commit $commit)$" "$T/version.txt"; check "--version names the commit $commit ($(cat "$T/version.txt"))" $?

# A consumer project: only the installed package, nothing from the source tree.
mkdir -p "$T/consumer"
cat > "$T/consumer/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.22)
project(consumer LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(lorafit 0.1 REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE lorafit::lorafit)
CM
cat > "$T/consumer/main.cpp" <<'CPP'
#include <cstdio>
#include "lorafit/models.h"
int main(int argc, char** argv) {
  auto m = lorafit::models::load_model(argv[1]);
  std::printf("params %lld\n", static_cast<long long>(m->num_parameters()));
  return m->num_parameters() > 0 ? 0 : 1;
}
CPP
extra=()
if grep -q "^LORAFIT_SANITIZE:BOOL=ON" "$BUILD/CMakeCache.txt"; then
  extra=(-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined)
fi
cmake -S "$T/consumer" -B "$T/consumer/build" -DCMAKE_PREFIX_PATH="$T/prefix" "${extra[@]}" > "$T/consumer.log" 2>&1 &&
  cmake --build "$T/consumer/build" >> "$T/consumer.log" 2>&1
rc=$?; check "find_package(lorafit) project configures and builds" $rc
[ $rc = 0 ] || tail -30 "$T/consumer.log"
"$T/consumer/build/consumer" "$SRC/tests/fixtures/models/tiny_bert" > "$T/consumer.out" 2>&1
check "the consumer loads a model through the installed library ($(cat "$T/consumer.out"))" $?

# The Debian package.
(cd "$BUILD" && cpack -G DEB -B "$T/pkg" > "$T/cpack.log" 2>&1); rc=$?
check "cpack -G DEB" $rc
[ $rc = 0 ] || tail -20 "$T/cpack.log"
deb=$(ls "$T"/pkg/lorafit_*.deb 2>/dev/null | head -1)
[ -n "$deb" ]; check "a .deb was written ($(basename "${deb:-none}"))" $?
if [ -n "$deb" ]; then
  dpkg-deb -c "$deb" > "$T/deb.txt"
  grep -q "./usr/bin/lorafit$" "$T/deb.txt"; check "the package holds /usr/bin/lorafit" $?
  grep -q "./usr/include/lorafit/peft.h$" "$T/deb.txt"; check "the package holds the headers" $?
  grep -q "./usr/lib/cmake/lorafit/lorafitConfig.cmake$" "$T/deb.txt"; check "the package holds the CMake config" $?
  deps=$(dpkg-deb -f "$deb" Depends)
  echo "$deps" | grep -q "libopenblas"; check "Depends names OpenBLAS ($deps)" $?
fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
