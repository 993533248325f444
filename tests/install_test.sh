#!/bin/sh
# install_test.sh BUILD_DIR - install tally into a temporary directory and
# use it from there.
#
# Runs 'meson install --destdir' into a fresh temporary directory, checks
# that every file the package promises is there (programs, the library
# with its soname, the header, tally.pc, the man pages, the systemd unit
# and the sysusers file), then builds a small C program against the
# installed tally.pc and runs it against the installed library.
# Prints "install test: ok" and exits 0, or names what is wrong and
# exits 1. Removes its temporary directory in every case.
set -u

die() {
	echo "install test: $*" >&2
	exit 1
}

[ $# -eq 1 ] || {
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
}
[ -f "$1/meson-info/meson-info.json" ] ||
	die "$1 is not a meson build directory (run meson setup first)"
build=$(cd "$1" && pwd) || die "cannot enter $1"
for tool in meson python3 pkg-config cc readelf; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-install.XXXXXX") ||
	die "cannot make a temporary directory"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
root=$tmp/root

if ! meson install -C "$build" --destdir "$root" >"$tmp/install.log" 2>&1
then
	cat "$tmp/install.log" >&2
	die "meson install failed (its log is above)"
fi

# The directories meson installed to, as absolute paths.
prefix='' bindir='' sbindir='' libdir='' includedir='' mandir='' sanitize=''
meson introspect "$build" --buildoptions >"$tmp/options.json" ||
	die "meson introspect failed"
eval "$(python3 - "$tmp/options.json" <<'EOF'
import json, sys
opts = {o["name"]: o["value"] for o in json.load(open(sys.argv[1]))}
prefix = opts["prefix"]
for name in ("bindir", "sbindir", "libdir", "includedir", "mandir"):
    value = opts[name]
    path = value if value.startswith("/") else prefix + "/" + value
    print("%s='%s'" % (name, path))
print("prefix='%s'" % prefix)
# A sanitized library needs its runtime in the program too.
san = opts.get("b_sanitize", "none")
if isinstance(san, list):
    san = ",".join(san)
print("sanitize='%s'" % ("" if san in ("", "none") else san))
EOF
)" || die "cannot read the build's directories"

missing=0
need() {
	if [ ! -e "$root$1" ]; then
		echo "install test: missing $1" >&2
		missing=$((missing + 1))
	elif [ -n "${2:-}" ] && [ ! -x "$root$1" ]; then
		echo "install test: $1 is not executable" >&2
		missing=$((missing + 1))
	fi
}

need "$sbindir/tallyd" x
need "$bindir/tallyctl" x
need "$bindir/tally-bench" x
need "$libdir/libtally.so"
need "$libdir/libtally.so.0"
need "$includedir/tally.h"
need "$libdir/pkgconfig/tally.pc"
need "$mandir/man8/tallyd.8"
need "$mandir/man1/tallyctl.1"
need "$mandir/man3/libtally.3"
need "$prefix/lib/systemd/system/tallyd.service"
need "$prefix/lib/sysusers.d/tally.conf"
[ "$missing" -eq 0 ] || die "$missing installed files missing or wrong"

# Programs link the soname, which the versioned file must carry.
soname=$(readelf -d "$root$libdir/libtally.so" |
	sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = "libtally.so.0" ] ||
	die "libtally.so has soname '$soname', not libtally.so.0"
grep -q "^ExecStart=$sbindir/tallyd " \
	"$root$prefix/lib/systemd/system/tallyd.service" ||
	die "tallyd.service does not start $sbindir/tallyd"
grep -q '^u tally ' "$root$prefix/lib/sysusers.d/tally.conf" ||
	die "tally.conf does not create the user tally"

cat >"$tmp/use.c" <<'EOF'
#include <errno.h>
#include <stdio.h>

#include <tally.h>

int main(int argc, char **argv)
{
	struct tally *t;
	int rc;

	printf("%s\n", tally_strerror(-ENOBUFS));
	rc = tally_open(&t, argv[1]);
	if (rc < 0) {
		fprintf(stderr, "tally_open: %s\n", tally_strerror(rc));
		return 1;
	}
	tally_close(t);
	printf("opened %s with tally %s\n", argv[1], TALLY_VERSION_STRING);
	return 0;
}
EOF

# The sysroot puts tally.pc's -I and -L inside the temporary directory.
flags=$(PKG_CONFIG_PATH="$root$libdir/pkgconfig" \
	PKG_CONFIG_SYSROOT_DIR="$root" \
	pkg-config --cflags --libs tally) ||
	die "pkg-config does not find the installed tally.pc"
case "$flags" in
*"-I$root$includedir"*"-L$root$libdir"*) ;;
*) die "pkg-config flags do not point into $root: $flags" ;;
esac
[ -z "$sanitize" ] || flags="-fsanitize=$sanitize $flags"
# shellcheck disable=SC2086 # the flags are words
cc -o "$tmp/use" "$tmp/use.c" $flags 2>"$tmp/cc.log" || {
	cat "$tmp/cc.log" >&2
	die "cannot build a program against the installed tally.pc"
}

mkdir "$tmp/ledger"
LD_LIBRARY_PATH="$root$libdir" "$tmp/use" "$tmp/ledger" >"$tmp/use.out" \
	2>&1 || {
	cat "$tmp/use.out" >&2
	die "the program built against the installed library failed"
}
LD_LIBRARY_PATH="$root$libdir" ldd "$tmp/use" |
	grep -q "=> $root$libdir/libtally.so.0 " ||
	die "the program does not load the installed libtally.so.0"
version=$(LD_LIBRARY_PATH="$root$libdir" "$root$bindir/tallyctl" --version) ||
	die "the installed tallyctl does not run"
grep -q "^opened $tmp/ledger with tally ${version#tallyctl }\$" \
	"$tmp/use.out" || die "unexpected output: $(cat "$tmp/use.out")"
[ "$(head -n 1 "$tmp/use.out")" != "" ] ||
	die "tally_strerror(-ENOBUFS) printed nothing"

echo "install test: ok"
