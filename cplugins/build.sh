#!/bin/sh
# Build the host shim and the example maps into cplugins/build/ (make cplugins).
# Plain gcc; rebuilds only what changed.  CC and CFLAGS may be overridden.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/build"
cc=${CC:-gcc}
cflags=${CFLAGS:--O2 -Wall -Wextra -Werror}
mkdir -p "$out"
for name in shim failover byaddr auth_http segv hang needs_symbol; do
    source="$here/$name.c"
    case $name in
        shim) target="$out/libperditionpy_shim.so" ;;
        *) target="$out/$name.so" ;;
    esac
    if [ ! -e "$target" ] || [ "$source" -nt "$target" ] || [ "$here/perditiondb.h" -nt "$target" ]; then
        # Build to a temporary name and rename: a running test never sees half a file.
        # shellcheck disable=SC2086
        $cc $cflags -shared -fPIC -I"$here" -o "$target.tmp" "$source"
        mv -f "$target.tmp" "$target"
    fi
done
