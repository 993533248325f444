/*
 * bench_compare.h - the comparison mode of tally-bench: tally beside a
 * Redis hash per session and the raw nanomsg ceiling, in one run.
 */
#ifndef TALLY_BENCH_COMPARE_H
#define TALLY_BENCH_COMPARE_H

/*
 * Runs tally-bench --compare ...: parses its own options from argv, prints
 * the command line, the runs and the tables to stdout. Returns the exit
 * status: 0 every run finished and every total checked was exact, 1 a
 * failure or a mismatch, 2 a usage error.
 */
int bench_compare(int argc, char **argv);

#endif
