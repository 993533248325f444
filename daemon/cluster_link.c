/*
 * cluster_link.c - tally-cluster.so: cluster_link.h over libnats.
 *
 * This is the only file that sees libnats: its statuses become negative
 * errnos here, and its connection events become log lines here.
 *
 * Threads: tallyd publishes from one thread and fetches from another,
 * while acks and releases may come from a third. libnats' connection,
 * JetStream context and messages are thread-safe; what this file adds is
 * guarded so: setup_lock serialises creating the stream, the consumer and
 * the pull subscription; pub_lock guards the batch being published, which
 * the ack handler (a libnats thread) fills in; the rest is atomic.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>

#include <nats/nats.h>

#include "cluster_link.h"

#define STREAM_NAME_MAX 32
#define MSG_ID_MAX 128
#define MAX_URLS 16
/* Between reconnect attempts: short, so a restarted server is found fast. */
#define RECONNECT_WAIT_MS 250
/* A TCP connect that hangs (a black-holed address) gives up after this. */
#define CONNECT_TIMEOUT_MS 1000
/* JetStream API requests made to set up or check the stream. */
#define API_WAIT_MS 2000
/* ready() may run a set-up; it must not hold its caller long. */
#define READY_WAIT_MS 1000
#define ACK_WAIT_NS (10LL * 1000000000LL)
#define DUPLICATE_WINDOW_NS (120LL * 1000000000LL)
#define MAX_ACK_PENDING 65536
#define FETCH_MIN_MS 10
#define CLOSE_WAIT_MS 2000
#define FAIL_QUIET_MS 10000
/*
 * A consumer deleted on the server is not announced to a pull subscriber
 * that has no fetch waiting: its next fetches just come back empty. After
 * empty fetches, and from ready(), it is looked up at most this often.
 */
#define CHECK_EVERY_MS 2000

struct cluster_link {
	char stream[STREAM_NAME_MAX + 1];
	char node[CLUSTER_NODE_LEN + 1];
	/* "<stream>.usage.<node>", "<stream>.usage.>", "tally-<node>" */
	char subject[STREAM_NAME_MAX + CLUSTER_NODE_LEN + 8];
	char filter[STREAM_NAME_MAX + 8];
	char durable[CLUSTER_NODE_LEN + 8];
	int replicas;
	int64_t max_age_ns;
	void (*log)(void *ctx, int level, const char *msg);
	void *log_ctx;

	natsOptions *opts;
	/* Set by the connector thread, before started; NULL until then. */
	natsConnection *nc;
	jsCtx *js;
	atomic_bool started;
	/* close() runs: the disconnect that follows is no news. */
	atomic_bool closing;
	pthread_t connector;
	bool connector_running;

	/* Known to exist on the server since the last (re)connect. */
	atomic_bool stream_ok;
	atomic_bool consumer_ok;
	/* When the consumer was last known to exist; see CHECK_EVERY_MS. */
	_Atomic int64_t checked_ms;
	pthread_mutex_t setup_lock;
	natsSubscription *_Atomic sub;

	/* The batch publish() waits for; the ack handler fills state[]. */
	pthread_mutex_t pub_lock;
	natsMsg **sent;
	int *state;
	size_t cap;
	size_t batch_n;
	size_t ack_next;
	char pub_err[160];

	/* The server last connected to, for the log lines. */
	pthread_mutex_t url_lock;
	char url[256];

	pthread_mutex_t close_lock;
	pthread_cond_t close_cond;
	bool closed_seen;

	/* The last failure logged, to hold back its repeats. */
	pthread_mutex_t fail_lock;
	char fail_line[320];
	int64_t fail_ms;
	unsigned fail_held;
};

/* libnats is process-wide: opened by the first link, closed by the last. */
static pthread_mutex_t lib_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned lib_users;

__attribute__((format(printf, 3, 4))) static void
say(struct cluster_link *l, int level, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (l->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	l->log(l->log_ctx, level, line);
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int to_errno(natsStatus s)
{
	switch (s) {
	case NATS_OK:
		return 0;
	case NATS_TIMEOUT:
		return -ETIMEDOUT;
	case NATS_NO_MEMORY:
		return -ENOMEM;
	case NATS_INVALID_ARG:
	case NATS_INVALID_SUBJECT:
	case NATS_ADDRESS_MISSING:
		return -EINVAL;
	case NATS_CONNECTION_CLOSED:
	case NATS_CONNECTION_DISCONNECTED:
	case NATS_NO_SERVER:
	case NATS_NOT_YET_CONNECTED:
	case NATS_STALE_CONNECTION:
	case NATS_IO_ERROR:
		return -ENOTCONN;
	default:
		return -EIO;
	}
}

/*
 * tallyd retries a failed call at once and forever, so the same failure
 * is logged once per FAIL_QUIET_MS with a count of the ones held back.
 */
static void say_failure(struct cluster_link *l, const char *line)
{
	int64_t now = now_ms();
	unsigned held;

	pthread_mutex_lock(&l->fail_lock);
	if (strcmp(line, l->fail_line) == 0 &&
	    now - l->fail_ms < FAIL_QUIET_MS) {
		l->fail_held++;
		pthread_mutex_unlock(&l->fail_lock);
		return;
	}
	held = l->fail_held;
	snprintf(l->fail_line, sizeof(l->fail_line), "%s", line);
	l->fail_ms = now;
	l->fail_held = 0;
	pthread_mutex_unlock(&l->fail_lock);
	if (held > 0)
		say(l, LOG_ERR, "%s (%u more like it held back)", line, held);
	else
		say(l, LOG_ERR, "%s", line);
}

/* Translates s, logging libnats' own text when the server refused. */
static int fail(struct cluster_link *l, natsStatus s, const char *what)
{
	int rc = to_errno(s);
	const char *text;
	char line[sizeof(l->fail_line)];

	if (rc != -EIO)
		return rc;
	text = nats_GetLastError(NULL);
	/* libnats puts "(file.c:line): " before the server's words. */
	if (text != NULL && text[0] == '(' && strstr(text, "): ") != NULL)
		text = strstr(text, "): ") + 3;
	snprintf(line, sizeof(line), "%s on stream %s failed: %s", what,
		 l->stream,
		 text != NULL && text[0] != '\0' ? text
						 : natsStatus_GetText(s));
	say_failure(l, line);
	return rc;
}

/* Statuses after which the stream or consumer may no longer exist. */
static bool maybe_gone(natsStatus s, jsErrCode code)
{
	return s == NATS_NOT_FOUND || s == NATS_NO_RESPONDERS ||
	       code == JSStreamNotFoundErr || code == JSConsumerNotFoundErr;
}

static void forget_setup(struct cluster_link *l)
{
	atomic_store(&l->stream_ok, false);
	atomic_store(&l->consumer_ok, false);
}

static bool connected(struct cluster_link *l)
{
	return atomic_load(&l->started) &&
	       natsConnection_Status(l->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ---- connection events ---- */

static void remember_url(struct cluster_link *l, natsConnection *nc)
{
	char url[256];

	if (natsConnection_GetConnectedUrl(nc, url, sizeof(url)) != NATS_OK ||
	    url[0] == '\0')
		return;
	pthread_mutex_lock(&l->url_lock);
	snprintf(l->url, sizeof(l->url), "%s", url);
	pthread_mutex_unlock(&l->url_lock);
}

static void last_url(struct cluster_link *l, char *buf, size_t size)
{
	pthread_mutex_lock(&l->url_lock);
	snprintf(buf, size, "%s", l->url[0] != '\0' ? l->url : "(none yet)");
	pthread_mutex_unlock(&l->url_lock);
}

static void on_connected(natsConnection *nc, void *closure)
{
	struct cluster_link *l = closure;
	char url[256];

	remember_url(l, nc);
	last_url(l, url, sizeof(url));
	say(l, LOG_NOTICE, "connected to %s", url);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
	struct cluster_link *l = closure;
	const char *why = NULL;
	char url[256];

	/* A server that comes back may be a new one: check again. */
	forget_setup(l);
	if (atomic_load(&l->closing))
		return;
	last_url(l, url, sizeof(url));
	natsConnection_GetLastError(nc, &why);
	say(l, LOG_WARNING, "disconnected from %s (%s); retrying every %d ms",
	    url, why != NULL && why[0] != '\0' ? why : "closed by peer",
	    RECONNECT_WAIT_MS);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
	struct cluster_link *l = closure;
	char url[256];

	remember_url(l, nc);
	last_url(l, url, sizeof(url));
	say(l, LOG_NOTICE, "reconnected to %s", url);
}

static void on_closed(natsConnection *nc, void *closure)
{
	struct cluster_link *l = closure;

	say(l, LOG_INFO, "connection to NATS closed");
	pthread_mutex_lock(&l->close_lock);
	l->closed_seen = true;
	pthread_cond_signal(&l->close_cond);
	pthread_mutex_unlock(&l->close_lock);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub,
			   natsStatus err, void *closure)
{
	struct cluster_link *l = closure;

	say(l, LOG_WARNING, "NATS reported: %s", natsStatus_GetText(err));
}

/* ---- set-up: stream, consumer, pull subscription ---- */

static void api_options(jsOptions *jo, int wait_ms)
{
	jsOptions_Init(jo);
	jo->Wait = wait_ms > 0 ? wait_ms : 1;
}

static void check_subjects(struct cluster_link *l, const jsStreamInfo *si)
{
	const jsStreamConfig *c = si->Config;

	if (c != NULL && c->SubjectsLen == 1 &&
	    strcmp(c->Subjects[0], l->filter) == 0)
		return;
	say(l, LOG_WARNING,
	    "stream %s exists without the single subject %s (it has %d); using it as is, check its configuration",
	    l->stream, l->filter, c != NULL ? c->SubjectsLen : 0);
}

static int create_stream(struct cluster_link *l, jsOptions *jo)
{
	const char *subjects[] = {l->filter};
	jsStreamConfig sc;
	jsErrCode code = 0;
	natsStatus s;

	jsStreamConfig_Init(&sc);
	sc.Name = l->stream;
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	sc.Storage = js_FileStorage;
	sc.Replicas = l->replicas;
	sc.MaxAge = l->max_age_ns;
	/* JetStream refuses a duplicate window longer than the max age. */
	sc.Duplicates = l->max_age_ns > 0 && l->max_age_ns < DUPLICATE_WINDOW_NS
				? l->max_age_ns
				: DUPLICATE_WINDOW_NS;
	s = js_AddStream(NULL, l->js, &sc, jo, &code);
	/* Another host may have created it meanwhile; that one is used. */
	if (s != NATS_OK && code != JSStreamNameExistErr)
		return fail(l, s, "creating the stream");
	say(l, LOG_NOTICE, "created stream %s (%s, %d replicas)", l->stream,
	    l->filter, l->replicas);
	return 0;
}

static int ensure_stream(struct cluster_link *l, jsOptions *jo)
{
	jsStreamInfo *si = NULL;
	jsErrCode code = 0;
	natsStatus s;

	s = js_GetStreamInfo(&si, l->js, l->stream, jo, &code);
	if (s == NATS_OK) {
		check_subjects(l, si);
		jsStreamInfo_Destroy(si);
		return 0;
	}
	if (s != NATS_NOT_FOUND && code != JSStreamNotFoundErr)
		return fail(l, s, "looking up the stream");
	return create_stream(l, jo);
}

static int create_consumer(struct cluster_link *l, jsOptions *jo)
{
	jsConsumerConfig cc;
	jsErrCode code = 0;
	natsStatus s;

	jsConsumerConfig_Init(&cc);
	cc.Durable = l->durable;
	cc.AckPolicy = js_AckExplicit;
	cc.AckWait = ACK_WAIT_NS;
	cc.MaxAckPending = MAX_ACK_PENDING;
	cc.DeliverPolicy = js_DeliverAll;
	s = js_AddConsumer(NULL, l->js, l->stream, &cc, jo, &code);
	if (s != NATS_OK && code != JSConsumerNameExistErr)
		return fail(l, s, "creating the consumer");
	say(l, LOG_NOTICE, "created consumer %s on stream %s", l->durable,
	    l->stream);
	return 0;
}

static int ensure_consumer(struct cluster_link *l, jsOptions *jo)
{
	jsConsumerInfo *ci = NULL;
	jsErrCode code = 0;
	natsStatus s;

	s = js_GetConsumerInfo(&ci, l->js, l->stream, l->durable, jo, &code);
	if (s == NATS_OK) {
		if (ci->Config == NULL ||
		    ci->Config->AckPolicy != js_AckExplicit ||
		    (ci->Config->DeliverSubject != NULL &&
		     ci->Config->DeliverSubject[0] != '\0'))
			say(l, LOG_WARNING,
			    "consumer %s on stream %s is not an explicit-ack pull consumer; delete it to let tallyd recreate it",
			    l->durable, l->stream);
		else
			say(l, LOG_NOTICE,
			    "using consumer %s on stream %s (%" PRIu64
			    " messages waiting)",
			    l->durable, l->stream, ci->NumPending);
		jsConsumerInfo_Destroy(ci);
		return 0;
	}
	if (s != NATS_NOT_FOUND && code != JSConsumerNotFoundErr)
		return fail(l, s, "looking up the consumer");
	return create_consumer(l, jo);
}

/*
 * The subscription is bound by stream and consumer name, so it stays valid
 * when the consumer is deleted and made again: it is created only once.
 */
static int subscribe(struct cluster_link *l, jsOptions *jo)
{
	natsSubscription *sub = NULL;
	jsSubOptions so;
	jsErrCode code = 0;
	natsStatus s;

	jsSubOptions_Init(&so);
	so.Stream = l->stream;
	so.Consumer = l->durable;
	s = js_PullSubscribe(&sub, l->js, l->filter, l->durable, jo, &so,
			     &code);
	if (s != NATS_OK)
		return fail(l, s, "subscribing to the consumer");
	atomic_store(&l->sub, sub);
	return 0;
}

static int ensure_locked(struct cluster_link *l, int wait_ms)
{
	jsOptions jo;
	int rc = 0;

	api_options(&jo, wait_ms);
	if (!atomic_load(&l->stream_ok)) {
		rc = ensure_stream(l, &jo);
		if (rc == 0)
			atomic_store(&l->stream_ok, true);
	}
	if (rc == 0 && !atomic_load(&l->consumer_ok)) {
		rc = ensure_consumer(l, &jo);
		if (rc == 0) {
			atomic_store(&l->checked_ms, now_ms());
			atomic_store(&l->consumer_ok, true);
		}
	}
	if (rc == 0 && atomic_load(&l->sub) == NULL)
		rc = subscribe(l, &jo);
	return rc;
}

static bool set_up(struct cluster_link *l)
{
	return atomic_load(&l->stream_ok) && atomic_load(&l->consumer_ok) &&
	       atomic_load(&l->sub) != NULL;
}

/* 0 when connected with stream, consumer and subscription in place. */
static int usable(struct cluster_link *l, int wait_ms)
{
	int rc;

	if (!connected(l))
		return -ENOTCONN;
	if (set_up(l))
		return 0;
	if (wait_ms > API_WAIT_MS || wait_ms <= 0)
		wait_ms = API_WAIT_MS;
	pthread_mutex_lock(&l->setup_lock);
	rc = ensure_locked(l, wait_ms);
	pthread_mutex_unlock(&l->setup_lock);
	return rc;
}

/* Claims the next look-up when it is due, so one thread makes it. */
static bool check_due(struct cluster_link *l)
{
	int64_t now = now_ms();
	int64_t last = atomic_load(&l->checked_ms);

	if (now - last < CHECK_EVERY_MS)
		return false;
	return atomic_compare_exchange_strong(&l->checked_ms, &last, now);
}

static void say_gone(struct cluster_link *l, jsErrCode code)
{
	if (code == JSStreamNotFoundErr)
		say(l, LOG_WARNING,
		    "stream %s is gone from the server (deleted?); creating it and consumer %s again, which read it from its first message",
		    l->stream, l->durable);
	else
		say(l, LOG_WARNING,
		    "consumer %s on stream %s is gone from the server (deleted?); creating it again, which reads the stream from its first message",
		    l->durable, l->stream);
}

/*
 * Looks the consumer up when a check is due. Returns 1 when it, or its
 * stream, is gone (the set-up is then forgotten, to be made again), else 0:
 * a failed look-up says nothing about the consumer and is left to the
 * calls that need the server.
 */
static int consumer_gone(struct cluster_link *l, int wait_ms)
{
	jsConsumerInfo *ci = NULL;
	jsErrCode code = 0;
	jsOptions jo;
	natsStatus s;

	if (!set_up(l) || !check_due(l))
		return 0;
	api_options(&jo, wait_ms);
	s = js_GetConsumerInfo(&ci, l->js, l->stream, l->durable, &jo, &code);
	jsConsumerInfo_Destroy(ci);
	if (s == NATS_OK ||
	    (s != NATS_NOT_FOUND && code != JSConsumerNotFoundErr &&
	     code != JSStreamNotFoundErr))
		return 0;
	forget_setup(l);
	say_gone(l, code);
	return 1;
}

/* ---- open and close ---- */

/* Letters, digits, '_' and '-': safe in a subject and a file name. */
static bool valid_stream(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	if (n == 0 || n > STREAM_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	return true;
}

static bool valid_node(const char *s)
{
	return s != NULL && strlen(s) == CLUSTER_NODE_LEN &&
	       strspn(s, "0123456789abcdef") == CLUSTER_NODE_LEN;
}

static bool valid_config(const struct cluster_link_config *cfg)
{
	return cfg->urls != NULL && cfg->urls[0] != '\0' &&
	       valid_stream(cfg->stream) && valid_node(cfg->node) &&
	       cfg->replicas >= 1 && cfg->replicas <= 5 &&
	       cfg->max_age_ms <= (uint64_t)INT64_MAX / 1000000u;
}

/* 1 to 65535, digits only: libnats would take "99999" and never connect. */
static bool valid_port(const char *p, size_t n)
{
	unsigned long port = 0;

	if (n == 0 || n > 5)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		port = port * 10 + (unsigned long)(p[i] - '0');
	}
	return port >= 1 && port <= 65535;
}

/*
 * nats:// or tls://, an optional user[:password]@, a host (a name, an
 * IPv4 address or a [bracketed] IPv6 one) and an optional :port. Anything
 * else would only make libnats retry forever without a word.
 */
static bool valid_url(const char *url)
{
	const char *host, *end, *colon;

	if (strncasecmp(url, "nats://", 7) == 0)
		host = url + 7;
	else if (strncasecmp(url, "tls://", 6) == 0)
		host = url + 6;
	else
		return false;
	if (strchr(host, '@') != NULL)
		host = strrchr(host, '@') + 1;
	end = host + strlen(host);
	if (host[0] == '[') {
		colon = strchr(host, ']');
		if (colon == NULL || colon == host + 1)
			return false;
		colon++;
		if (*colon != '\0' && *colon != ':')
			return false;
	} else {
		colon = strchr(host, ':');
		if (colon == NULL)
			colon = end;
		if (colon == host ||
		    strcspn(host, "/?# ") < (size_t)(colon - host))
			return false;
	}
	if (*colon == '\0')
		return true;
	return valid_port(colon + 1, (size_t)(end - colon - 1));
}

/* Splits the comma-separated list in place; spaces around URLs are cut. */
static int split_urls(char *list, const char **urls)
{
	int n = 0;

	for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok != NULL;
	     tok = strtok_r(NULL, ",", &save)) {
		char *end;

		tok += strspn(tok, " \t");
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok == '\0')
			continue;
		if (n == MAX_URLS || !valid_url(tok))
			return -EINVAL;
		urls[n++] = tok;
	}
	return n > 0 ? n : -EINVAL;
}

static int set_servers(natsOptions *o, const char *list)
{
	const char *urls[MAX_URLS];
	char *copy = strdup(list);
	int n, rc;

	if (copy == NULL)
		return -ENOMEM;
	n = split_urls(copy, urls);
	rc = n < 0 ? n : to_errno(natsOptions_SetServers(o, urls, n));
	free(copy);
	return rc;
}

/* Reconnect forever, a failed first connect included, and log each step. */
static int make_options(struct cluster_link *l, const char *urls)
{
	natsOptions *o = NULL;
	natsStatus s;
	int rc;

	if (natsOptions_Create(&o) != NATS_OK)
		return -ENOMEM;
	rc = set_servers(o, urls);
	if (rc < 0)
		goto fail;
	s = natsOptions_SetMaxReconnect(o, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(o, RECONNECT_WAIT_MS);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS);
	if (s == NATS_OK)
		s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected,
							l);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(o, on_disconnected, l);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(o, on_reconnected, l);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(o, on_closed, l);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(o, on_async_error, l);
	rc = to_errno(s);
	if (rc < 0)
		goto fail;
	l->opts = o;
	return 0;

fail:
	natsOptions_Destroy(o);
	return rc == -EIO ? -EINVAL : rc;
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
		       void *closure);

static int make_js(struct cluster_link *l)
{
	jsOptions jo;

	jsOptions_Init(&jo);
	jo.Wait = API_WAIT_MS;
	jo.PublishAsync.AckHandler = on_pub_ack;
	jo.PublishAsync.AckHandlerClosure = l;
	return to_errno(natsConnection_JetStream(&l->js, l->nc, &jo));
}

/*
 * The first connect runs here, off the caller's thread: with
 * RetryOnFailedConnect it returns once every server was tried once, but
 * a black-holed address can hold it for CONNECT_TIMEOUT_MS per URL.
 */
static void *connector_main(void *arg)
{
	struct cluster_link *l = arg;
	natsStatus s;
	char url[256];

	s = natsConnection_Connect(&l->nc, l->opts);
	if (s == NATS_OK) {
		remember_url(l, l->nc);
		last_url(l, url, sizeof(url));
		say(l, LOG_NOTICE, "connected to %s", url);
	} else if (s == NATS_NOT_YET_CONNECTED) {
		say(l, LOG_WARNING,
		    "no NATS server answers yet; retrying every %d ms",
		    RECONNECT_WAIT_MS);
	} else {
		say(l, LOG_ERR,
		    "cannot use NATS (%s); clustering stays off until tallyd restarts",
		    natsStatus_GetText(s));
		return NULL;
	}
	if (make_js(l) < 0) {
		say(l, LOG_ERR,
		    "no JetStream context; clustering stays off until tallyd restarts");
		return NULL;
	}
	atomic_store(&l->started, true);
	return NULL;
}

static int lib_open(void)
{
	int rc = 0;

	pthread_mutex_lock(&lib_lock);
	if (lib_users == 0 && nats_Open(-1) != NATS_OK)
		rc = -ENOMEM;
	if (rc == 0)
		lib_users++;
	pthread_mutex_unlock(&lib_lock);
	return rc;
}

/* Waits for libnats' threads so that nothing of it outlives the last link. */
static void lib_close(void)
{
	pthread_mutex_lock(&lib_lock);
	if (--lib_users == 0)
		nats_CloseAndWait(CLOSE_WAIT_MS);
	pthread_mutex_unlock(&lib_lock);
}

static void copy_config(struct cluster_link *l,
			const struct cluster_link_config *cfg)
{
	snprintf(l->stream, sizeof(l->stream), "%s", cfg->stream);
	snprintf(l->node, sizeof(l->node), "%s", cfg->node);
	snprintf(l->subject, sizeof(l->subject), "%s.usage.%s", cfg->stream,
		 cfg->node);
	snprintf(l->filter, sizeof(l->filter), "%s.usage.>", cfg->stream);
	snprintf(l->durable, sizeof(l->durable), "tally-%s", cfg->node);
	l->replicas = cfg->replicas;
	l->max_age_ns = (int64_t)cfg->max_age_ms * 1000000;
	l->log = cfg->log;
	l->log_ctx = cfg->log_ctx;
}

static void init_locks(struct cluster_link *l)
{
	pthread_mutex_init(&l->setup_lock, NULL);
	pthread_mutex_init(&l->pub_lock, NULL);
	pthread_mutex_init(&l->url_lock, NULL);
	pthread_mutex_init(&l->close_lock, NULL);
	pthread_mutex_init(&l->fail_lock, NULL);
	pthread_cond_init(&l->close_cond, NULL);
}

static void fini_locks(struct cluster_link *l)
{
	pthread_mutex_destroy(&l->fail_lock);
	pthread_cond_destroy(&l->close_cond);
	pthread_mutex_destroy(&l->close_lock);
	pthread_mutex_destroy(&l->url_lock);
	pthread_mutex_destroy(&l->pub_lock);
	pthread_mutex_destroy(&l->setup_lock);
}

static int link_open(const struct cluster_link_config *cfg,
		     struct cluster_link **out)
{
	struct cluster_link *l;
	int rc;

	*out = NULL;
	if (cfg == NULL || !valid_config(cfg))
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (l == NULL)
		return -ENOMEM;
	copy_config(l, cfg);
	init_locks(l);
	rc = lib_open();
	if (rc < 0)
		goto fail_lib;
	rc = make_options(l, cfg->urls);
	if (rc == -EINVAL)
		say(l, LOG_ERR,
		    "refusing the NATS URLs \"%s\": each must be nats://host[:port] or tls://host[:port], with a port from 1 to 65535",
		    cfg->urls);
	if (rc < 0)
		goto fail_options;
	rc = -pthread_create(&l->connector, NULL, connector_main, l);
	if (rc < 0)
		goto fail_thread;
	l->connector_running = true;
	*out = l;
	return 0;

fail_thread:
	natsOptions_Destroy(l->opts);
fail_options:
	lib_close();
fail_lib:
	fini_locks(l);
	free(l);
	return rc;
}

/* The closed callback is the last one libnats makes with l: wait for it. */
static bool wait_closed(struct cluster_link *l)
{
	struct timespec until;
	bool seen;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += CLOSE_WAIT_MS / 1000;
	pthread_mutex_lock(&l->close_lock);
	while (!l->closed_seen && rc == 0)
		rc = pthread_cond_timedwait(&l->close_cond, &l->close_lock,
					    &until);
	seen = l->closed_seen;
	pthread_mutex_unlock(&l->close_lock);
	return seen;
}

static void link_close(struct cluster_link *l)
{
	bool seen = true;

	if (l == NULL)
		return;
	atomic_store(&l->closing, true);
	if (l->connector_running)
		pthread_join(l->connector, NULL);
	natsSubscription_Destroy(atomic_load(&l->sub));
	jsCtx_Destroy(l->js);
	if (l->nc != NULL) {
		natsConnection_Close(l->nc);
		seen = wait_closed(l);
		natsConnection_Destroy(l->nc);
	}
	natsOptions_Destroy(l->opts);
	lib_close();
	if (!seen) {
		/* XXX: a late callback could still use l; keep it. */
		say(l, LOG_WARNING,
		    "NATS did not confirm the close; leaking the link rather than freeing it");
		return;
	}
	free(l->sent);
	free(l->state);
	fini_locks(l);
	free(l);
}

static int link_ready(struct cluster_link *l)
{
	int rc;

	if (!connected(l))
		return 0;
	if (set_up(l) && !consumer_gone(l, READY_WAIT_MS))
		return 1;
	/* Someone else is setting up: report the state without waiting. */
	if (pthread_mutex_trylock(&l->setup_lock) != 0)
		return 0;
	rc = ensure_locked(l, READY_WAIT_MS);
	pthread_mutex_unlock(&l->setup_lock);
	return rc == 0;
}

/* ---- publish ---- */

/*
 * Runs on libnats' thread for each message of the batch: marks it stored
 * or failed. Acks mostly come in order, so the next index is tried first.
 */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
		       void *closure)
{
	struct cluster_link *l = closure;
	size_t i;

	pthread_mutex_lock(&l->pub_lock);
	i = 0;
	if (l->ack_next < l->batch_n && l->sent[l->ack_next] == msg)
		i = l->ack_next;
	while (i < l->batch_n && l->sent[i] != msg)
		i++;
	if (i < l->batch_n) {
		/*
		 * Forgotten once matched: msg is freed below, and malloc may
		 * hand its address to a later message of the same batch.
		 */
		l->sent[i] = NULL;
		l->state[i] = pa != NULL ? 1 : to_errno(pae->Err);
		l->ack_next = i + 1;
		if (pae != NULL && l->pub_err[0] == '\0')
			snprintf(l->pub_err, sizeof(l->pub_err), "%s",
				 pae->ErrText != NULL ? pae->ErrText : "?");
	}
	if (pae != NULL && maybe_gone(pae->Err, pae->ErrCode))
		forget_setup(l);
	pthread_mutex_unlock(&l->pub_lock);
	natsMsg_Destroy(msg);
}

static int batch_begin(struct cluster_link *l, size_t n)
{
	int rc = 0;

	pthread_mutex_lock(&l->pub_lock);
	if (n > l->cap) {
		natsMsg **sent = realloc(l->sent, n * sizeof(*sent));
		int *state;

		if (sent != NULL)
			l->sent = sent;
		state = sent != NULL ? realloc(l->state, n * sizeof(*state))
				     : NULL;
		if (state != NULL) {
			l->state = state;
			l->cap = n;
		} else {
			rc = -ENOMEM;
		}
	}
	if (rc == 0) {
		memset(l->sent, 0, n * sizeof(*l->sent));
		memset(l->state, 0, n * sizeof(*l->state));
		l->batch_n = n;
		l->ack_next = 0;
		l->pub_err[0] = '\0';
	}
	pthread_mutex_unlock(&l->pub_lock);
	return rc;
}

static int send_one(struct cluster_link *l, const struct cluster_out *m,
		    size_t i)
{
	natsMsg *msg = NULL;
	jsPubOptions po;
	natsStatus s;

	if (m->id == NULL || m->id[0] == '\0' || strlen(m->id) > MSG_ID_MAX ||
	    m->len > INT_MAX || (m->data == NULL && m->len > 0))
		return -EINVAL;
	s = natsMsg_Create(&msg, l->subject, NULL, m->data, (int)m->len);
	if (s != NATS_OK)
		return to_errno(s);
	jsPubOptions_Init(&po);
	po.MsgId = m->id;
	/* Recorded first: the ack may arrive before the call returns. */
	pthread_mutex_lock(&l->pub_lock);
	l->sent[i] = msg;
	pthread_mutex_unlock(&l->pub_lock);
	s = js_PublishMsgAsync(l->js, &msg, &po);
	if (s == NATS_OK)
		return 0;
	pthread_mutex_lock(&l->pub_lock);
	l->sent[i] = NULL;
	pthread_mutex_unlock(&l->pub_lock);
	natsMsg_Destroy(msg);
	return fail(l, s, "publishing");
}

/*
 * Waits for the acks until the deadline. What is still unacknowledged
 * then is taken back from libnats and dropped: its ack, if it comes, is
 * ignored, and the caller publishes it again under the same id.
 */
static void wait_acks(struct cluster_link *l, int64_t deadline)
{
	int64_t left = deadline - now_ms();
	natsMsgList pending;
	jsPubOptions po;

	jsPubOptions_Init(&po);
	po.MaxWait = left > 0 ? left : 1;
	if (js_PublishAsyncComplete(l->js, &po) == NATS_OK)
		return;
	if (js_PublishAsyncGetPendingList(&pending, l->js) == NATS_OK)
		natsMsgList_Destroy(&pending);
}

/* The stored prefix, or the error that ended it when it is empty. */
static int batch_end(struct cluster_link *l, int send_rc)
{
	char why[sizeof(l->pub_err)];
	size_t stored = 0, n;
	int rc;

	pthread_mutex_lock(&l->pub_lock);
	n = l->batch_n;
	while (stored < n && l->state[stored] == 1)
		stored++;
	if (stored > 0)
		rc = (int)stored;
	else if (l->state[0] < 0)
		rc = l->state[0];
	else
		rc = send_rc < 0 ? send_rc : -ETIMEDOUT;
	snprintf(why, sizeof(why), "%s", l->pub_err);
	l->batch_n = 0;
	pthread_mutex_unlock(&l->pub_lock);
	if (stored < n && why[0] != '\0')
		say(l, LOG_WARNING, "%zu of %zu messages to %s not stored: %s",
		    n - stored, n, l->subject, why);
	if (rc == -ETIMEDOUT && !connected(l))
		rc = -ENOTCONN;
	return rc;
}

static int link_publish(struct cluster_link *l, const struct cluster_out *msgs,
			size_t n, int timeout_ms)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	int64_t left;
	int rc;

	if (n == 0)
		return 0;
	if (n > INT_MAX)
		return -EINVAL;
	rc = usable(l, timeout_ms);
	if (rc < 0)
		return rc;
	rc = batch_begin(l, n);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = send_one(l, &msgs[i], i);
	/*
	 * libnats' flusher thread sends buffered publishes about a
	 * millisecond later (measured: 1 ms per one-message batch); a flush
	 * sends the batch now, at the cost of one round trip.
	 */
	left = deadline - now_ms();
	natsConnection_FlushTimeout(l->nc, left > 0 ? left : 1);
	wait_acks(l, deadline);
	return batch_end(l, rc);
}

/* ---- fetch, ack, nak, release ---- */

static void node_of(const char *subject, char *node)
{
	const char *dot = subject != NULL ? strrchr(subject, '.') : NULL;
	const char *tok = dot != NULL ? dot + 1 : "";

	/* Too long to be a node id: left empty, for tallyd to refuse. */
	if (strlen(tok) > CLUSTER_NODE_LEN)
		tok = "";
	snprintf(node, CLUSTER_NODE_LEN + 1, "%s", tok);
}

static void fill_in(struct cluster_link *l, struct cluster_in *in, natsMsg *m)
{
	jsMsgMetaData *md = NULL;

	memset(in, 0, sizeof(*in));
	in->data = natsMsg_GetData(m);
	in->len = (size_t)natsMsg_GetDataLength(m);
	node_of(natsMsg_GetSubject(m), in->node);
	if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
		in->stream_seq = md->Sequence.Stream;
		in->stored_ns = md->Timestamp;
		in->pending = md->NumPending;
		jsMsgMetaData_Destroy(md);
	} else {
		say(l, LOG_WARNING, "a message on %s has no JetStream metadata",
		    in->node);
	}
	in->handle = m;
}

/*
 * An empty fetch looks the same whether the stream is quiet or the
 * consumer was deleted: tell them apart, and set up again in the second
 * case, so that the next fetch reads from the new consumer.
 */
static int fetched_none(struct cluster_link *l, int timeout_ms)
{
	int rc;

	if (!consumer_gone(l, API_WAIT_MS))
		return 0;
	rc = usable(l, timeout_ms);
	return rc < 0 ? rc : 0;
}

/*
 * Messages the server sent for an earlier pull request that had already
 * ended on this side (a fetch that timed out, a reconnect) wait in the
 * subscription, and libnats 3.4.1's fetch takes them first. With such
 * leftovers and a batch above one it was seen, under ASan while servers
 * restarted under load, to put more messages than the batch into its
 * array, and tallyd then died in free(). So leftovers are taken one per
 * fetch, which sends no request and cannot pass a batch of one; with none
 * waiting, a fetch asks for a batch.
 */
#define FETCH_BATCH_MAX 64

static int batch_size(natsSubscription *sub, size_t max)
{
	int waiting = 0, bytes = 0;

	if (natsSubscription_GetPending(sub, &waiting, &bytes) != NATS_OK ||
	    waiting > 0)
		return 1;
	return max < FETCH_BATCH_MAX ? (int)max : FETCH_BATCH_MAX;
}

/*
 * no_wait with an expiry asks the server to wait for the first message
 * only and then to return what it has, so fetch never sits on messages
 * until the timeout while the stream is quiet.
 */
static int link_fetch(struct cluster_link *l, struct cluster_in *in, size_t max,
		      int timeout_ms)
{
	natsSubscription *sub;
	jsFetchRequest req;
	natsMsgList list;
	natsStatus s;
	int rc, asked;

	if (max == 0)
		return 0;
	rc = usable(l, timeout_ms);
	if (rc < 0)
		return rc;
	sub = atomic_load(&l->sub);
	jsFetchRequest_Init(&req);
	req.Batch = batch_size(sub, max);
	asked = req.Batch;
	req.NoWait = true;
	req.Expires = (int64_t)(timeout_ms > FETCH_MIN_MS ? timeout_ms
							  : FETCH_MIN_MS) *
		      1000000;
	s = natsSubscription_FetchRequest(&list, sub, &req);
	if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND)
		return fetched_none(l, timeout_ms);
	if (s != NATS_OK) {
		forget_setup(l);
		return fail(l, s, "fetching");
	}
	/* Messages came: the consumer exists, no need to look it up. */
	atomic_store(&l->checked_ms, now_ms());
	/* What does not fit is dropped un-acked: it comes again. */
	rc = list.Count < asked ? list.Count : asked;
	rc = (size_t)rc < max ? rc : (int)max;
	for (int i = 0; i < rc; i++) {
		fill_in(l, &in[i], list.Msgs[i]);
		list.Msgs[i] = NULL;
	}
	natsMsgList_Destroy(&list);
	return rc;
}

static int link_ack(struct cluster_link *l, struct cluster_in *m)
{
	if (m == NULL || m->handle == NULL)
		return -EINVAL;
	return fail(l, natsMsg_Ack(m->handle, NULL), "acking");
}

static int link_nak(struct cluster_link *l, struct cluster_in *m, int delay_ms)
{
	if (m == NULL || m->handle == NULL || delay_ms < 0)
		return -EINVAL;
	return fail(l, natsMsg_NakWithDelay(m->handle, delay_ms, NULL),
		    "naking");
}

static void link_release(struct cluster_link *l, struct cluster_in *m)
{
	if (m == NULL)
		return;
	natsMsg_Destroy(m->handle);
	m->handle = NULL;
}

static const struct cluster_link_ops ops = {
	.abi = CLUSTER_LINK_ABI,
	.open = link_open,
	.close = link_close,
	.ready = link_ready,
	.publish = link_publish,
	.fetch = link_fetch,
	.ack = link_ack,
	.nak = link_nak,
	.release = link_release,
};

/* The module's only exported symbol: meson hides all the others. */
__attribute__((visibility("default"))) const struct cluster_link_ops *
tally_cluster_link(void);

const struct cluster_link_ops *tally_cluster_link(void)
{
	return &ops;
}
