#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "log.h"

/* At most this many rate-limited lines per tag and second. */
#define LIMIT_LINES 10

static int max_level = LOG_NOTICE;

static const char *const names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",  [LOG_CRIT] = "crit",
	[LOG_ERR] = "err",     [LOG_WARNING] = "warn", [LOG_NOTICE] = "notice",
	[LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
};

void log_set_level(int level)
{
	max_level = level < LOG_ERR	? LOG_ERR
		    : level > LOG_DEBUG ? LOG_DEBUG
					: level;
}

int log_get_level(void)
{
	return max_level;
}

__attribute__((format(printf, 3, 0))) static void
vlog(int prio, const char *tag, const char *fmt, va_list ap)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ tallyd %s %s: ",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[prio],
		     tag);
	if (n > 0 && (size_t)n < sizeof(line))
		vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	/* One write per line keeps lines whole between threads. */
	fprintf(stderr, "%s\n", line);
}

void log_msg(int prio, const char *tag, const char *fmt, ...)
{
	va_list ap;

	if (prio > max_level)
		return;
	va_start(ap, fmt);
	vlog(prio, tag, fmt, ap);
	va_end(ap);
}

void log_limited(struct log_limit *l, int prio, const char *tag,
		 const char *fmt, ...)
{
	struct timespec ts;
	uint64_t now;
	va_list ap;

	if (prio > max_level)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	if (now - l->window_start_ns >= 1000000000u) {
		if (l->suppressed > 0)
			log_msg(prio, tag, "%u similar lines suppressed",
				l->suppressed);
		l->window_start_ns = now;
		l->lines = 0;
		l->suppressed = 0;
	}
	if (l->lines >= LIMIT_LINES) {
		l->suppressed++;
		return;
	}
	l->lines++;
	va_start(ap, fmt);
	vlog(prio, tag, fmt, ap);
	va_end(ap);
}
