/*
 * log.h - the daemon's log: syslog levels, a subsystem tag, stderr.
 */
#ifndef TALLYD_LOG_H
#define TALLYD_LOG_H

#include <stdint.h>
#include <syslog.h>

/* Lines above this level (LOG_ERR .. LOG_DEBUG) are not written. */
void log_set_level(int level);
int log_get_level(void);

__attribute__((format(printf, 3, 4))) void log_msg(int prio, const char *tag,
						   const char *fmt, ...);

#define log_err(tag, ...) log_msg(LOG_ERR, tag, __VA_ARGS__)
#define log_warn(tag, ...) log_msg(LOG_WARNING, tag, __VA_ARGS__)
#define log_notice(tag, ...) log_msg(LOG_NOTICE, tag, __VA_ARGS__)
#define log_info(tag, ...) log_msg(LOG_INFO, tag, __VA_ARGS__)
#define log_debug(tag, ...) log_msg(LOG_DEBUG, tag, __VA_ARGS__)

/*
 * A budget of lines per interval for messages that input can trigger at
 * will (malformed messages); what it holds back is counted and reported
 * with the next line that passes.
 */
struct log_limit {
	uint64_t window_start_ns;
	unsigned lines;
	unsigned suppressed;
};

__attribute__((format(printf, 4, 5))) void log_limited(struct log_limit *l,
						       int prio,
						       const char *tag,
						       const char *fmt, ...);

#endif
