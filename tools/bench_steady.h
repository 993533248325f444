/*
 * bench_steady.h - the steady-load mode of tally-bench.
 */
#ifndef TALLY_BENCH_STEADY_H
#define TALLY_BENCH_STEADY_H

/* Runs tally-bench --steady ...; returns the process's exit status. */
int bench_steady(int argc, char **argv);

#endif
