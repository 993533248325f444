/*
 * bench_soak.h - the soak mode of tally-bench.
 */
#ifndef TALLY_BENCH_SOAK_H
#define TALLY_BENCH_SOAK_H

/* Runs tally-bench --soak ...; returns the process's exit status. */
int bench_soak(int argc, char **argv);

#endif
