/*
 * cluster_link.h - what tallyd asks of NATS JetStream, and nothing more.
 *
 * The link is a module of its own, tally-cluster.so, and the only code
 * that links libnats. tallyd loads it with dlopen() when --cluster is
 * given, so a daemon run without --cluster neither needs nor loads libnats.
 * The module knows nothing of ledgers or usages: it moves opaque messages.
 *
 * Messages go to the subject "<stream>.usage.<node>", where node is the
 * publishing host's id; the stream holds "<stream>.usage.>". JetStream
 * drops a repeated publish whose message id it has seen within its
 * duplicate window. Every host reads the whole stream through a durable
 * pull consumer named "tally-<node>", acking each message explicitly.
 *
 * Every call returns 0 (or a count) or a negative errno: -ENOTCONN while
 * no server is reachable, -ETIMEDOUT when a wait ran out, -EINVAL for a bad
 * configuration, -EIO for any other failure the server reported (the
 * module logs the server's text through cfg->log).
 */
#ifndef TALLYD_CLUSTER_LINK_H
#define TALLYD_CLUSTER_LINK_H

#include <stddef.h>
#include <stdint.h>

#define CLUSTER_LINK_ABI 1
/* The module's one exported symbol, returning its operations. */
#define CLUSTER_LINK_SYMBOL "tally_cluster_link"
#define CLUSTER_NODE_LEN 32

struct cluster_link;

struct cluster_link_config {
	/* Comma-separated nats:// URLs of the servers to try. */
	const char *urls;
	/* The stream's name: 1 to 32 of [A-Za-z0-9_-]. */
	const char *stream;
	/* This host's id: CLUSTER_NODE_LEN lowercase hex digits. */
	const char *node;
	/* Replicas and maximum age of a stream this link creates. */
	int replicas;
	uint64_t max_age_ms;
	/* Called from any thread, with syslog levels (LOG_ERR ...). */
	void (*log)(void *ctx, int level, const char *msg);
	void *log_ctx;
};

/* One message to publish. */
struct cluster_out {
	/* The message id JetStream deduplicates by; at most 128 bytes. */
	const char *id;
	const void *data;
	size_t len;
};

/* One message received; valid until released. */
struct cluster_in {
	const void *data;
	size_t len;
	/* The publishing host, from the subject; NUL-terminated. */
	char node[CLUSTER_NODE_LEN + 1];
	uint64_t stream_seq;
	/* When JetStream stored it, ns since the epoch. */
	int64_t stored_ns;
	/* Messages still waiting for this consumer after this one. */
	uint64_t pending;
	void *handle;
};

struct cluster_link_ops {
	unsigned abi;
	/*
	 * Starts connecting and returns without waiting for a server: while
	 * none answers, the link retries in the background forever and the
	 * other calls fail with -ENOTCONN. Creates the stream if missing,
	 * and the durable consumer, once connected (and again after any
	 * error that says they are gone). Errors: -EINVAL, -ENOMEM.
	 */
	int (*open)(const struct cluster_link_config *cfg,
		    struct cluster_link **out);
	/* Drops the connection; received messages not yet acked come again. */
	void (*close)(struct cluster_link *l);
	/* 1 while connected and the stream and consumer are known, else 0. */
	int (*ready)(struct cluster_link *l);
	/*
	 * Publishes n messages in order and waits up to timeout_ms for
	 * JetStream to acknowledge them. Returns how many of the first
	 * messages are known stored (a prefix: 0 to n), or a negative errno
	 * when nothing was. A message past the prefix may be stored too;
	 * publishing it again with the same id is then dropped as a repeat.
	 */
	int (*publish)(struct cluster_link *l, const struct cluster_out *msgs,
		       size_t n, int timeout_ms);
	/*
	 * Fills up to max messages for this host's durable consumer, waiting
	 * up to timeout_ms for the first. Returns how many (0 when none came
	 * in time) or a negative errno.
	 */
	int (*fetch)(struct cluster_link *l, struct cluster_in *in, size_t max,
		     int timeout_ms);
	/* Tells JetStream the message is done with; it is not sent again. */
	int (*ack)(struct cluster_link *l, struct cluster_in *m);
	/* Asks for the message again after delay_ms. */
	int (*nak)(struct cluster_link *l, struct cluster_in *m, int delay_ms);
	/* Frees what fetch gave; an un-acked message will come again. */
	void (*release)(struct cluster_link *l, struct cluster_in *m);
};

typedef const struct cluster_link_ops *(*cluster_link_entry)(void);

#endif
