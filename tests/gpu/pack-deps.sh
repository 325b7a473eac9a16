#!/usr/bin/env bash
# tests/gpu/pack-deps.sh [DIR]: copies the build dependencies a bare GPU machine
# may lack (cJSON, PCRE2: headers and libraries) from this machine into DIR
# (default build-deps/ at the repository root, ignored by git), so that
# tests/gpu/device-check.sh can build there without a network:
#   DIR/include/cjson/cJSON.h, DIR/include/pcre2.h
#   DIR/lib/libpcre2-8.a                      (Debian ships it: linked statically)
#   DIR/lib/libcjson.so, libcjson.so.1        (no static cJSON in Debian: the build
#                                              records DIR/lib as the binary's rpath;
#                                              copies, not symlinks, so any transfer keeps them)
# CMake finds them with -DCMAKE_PREFIX_PATH=DIR when pkg-config does not (see
# glmtp_dep in CMakeLists.txt). Hand DIR to the GPU machine with the tree.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$root/build-deps}
mkdir -p "$dir/include/cjson" "$dir/lib"

find_one() { # first existing file among the arguments
    for f in "$@"; do [ -e "$f" ] && { echo "$f"; return 0; }; done
    return 1
}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
libdirs="/usr/lib/$multiarch /usr/lib64 /usr/lib /usr/local/lib"

hdr=$(find_one /usr/include/cjson/cJSON.h /usr/local/include/cjson/cJSON.h) ||
    { echo "pack-deps: cJSON headers not found (apt-get install libcjson-dev)" >&2; exit 1; }
cp "$hdr" "$dir/include/cjson/"
hdr=$(find_one /usr/include/pcre2.h /usr/local/include/pcre2.h) ||
    { echo "pack-deps: pcre2.h not found (apt-get install libpcre2-dev)" >&2; exit 1; }
cp "$hdr" "$dir/include/"

found=0
for d in $libdirs; do
    if [ -e "$d/libpcre2-8.a" ]; then cp "$d/libpcre2-8.a" "$dir/lib/"; found=1; break; fi
done
[ $found = 1 ] || { echo "pack-deps: libpcre2-8.a not found" >&2; exit 1; }

found=0
for d in $libdirs; do
    if [ -e "$d/libcjson.so" ]; then
        real=$(readlink -f "$d/libcjson.so")
        soname=$(objdump -p "$real" 2>/dev/null | awk '/SONAME/ {print $2}')
        cp -L "$real" "$dir/lib/libcjson.so"            # what the linker reads
        cp -L "$real" "$dir/lib/${soname:-libcjson.so.1}" # what the loader looks for
        found=1
        break
    fi
done
[ $found = 1 ] || { echo "pack-deps: libcjson.so not found" >&2; exit 1; }
echo "pack-deps: wrote $dir ($(du -sh "$dir" | cut -f1)): $(cd "$dir" && find . -type f -o -type l | sort | tr '\n' ' ')"
