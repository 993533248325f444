/*
 * bench_util.h - what the modes of tally-bench share.
 */
#ifndef TALLY_BENCH_UTIL_H
#define TALLY_BENCH_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/*
 * bench_find_tallyd() - the daemon to start: given (from --tallyd) if not
 * NULL, else $TALLYD, else tallyd beside tally-bench, else ../daemon/tallyd
 * from it (the meson build tree), resolved to an absolute path. Writes it
 * to buf; 0, or -ENOENT when none is executable.
 */
int bench_find_tallyd(const char *given, char *buf, size_t len);

/*
 * bench_spawn_tallyd() - starts tallyd -q on dir, its log appended to
 * dir/tallyd.log; its pid, or a negative errno. Does not wait for it.
 */
pid_t bench_spawn_tallyd(const char *tallyd, const char *dir);

/* Prints argv, quoted so that a shell would run the same command. */
void bench_print_command(int argc, char **argv);

#endif
