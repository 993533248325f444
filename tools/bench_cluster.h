/*
 * bench_cluster.h - tally-bench --cluster: ingest cost and convergence lag
 * of hosts clustered through NATS JetStream.
 */
#ifndef TALLY_BENCH_CLUSTER_H
#define TALLY_BENCH_CLUSTER_H

int bench_cluster(int argc, char **argv);

#endif
