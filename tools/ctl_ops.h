/*
 * ctl_ops.h - tallyctl's operator commands, kept apart from the commands
 * that read one session or record one usage (tallyctl.c).
 *
 * Each command has the signature of tallyctl's command table: it parses
 * its own options from argv (argv[0] is the command's name) and returns
 * the exit status its help text promises: 0 success, 1 runtime failure,
 * 2 usage error.
 */
#ifndef TALLY_CTL_OPS_H
#define TALLY_CTL_OPS_H

/* What main() learnt from the options before the command. */
struct ctl {
	/* The ledger directory, from --dir or tally_default_dir(). */
	const char *dir;
	char dir_buf[4096];
	/* "tallyctl COMMAND", the name getopt_long prints in its errors. */
	char prog[64];
};

/* What every command shares; defined in ctl_ops.c. */
struct tally;
typedef struct json_t json_t;

__attribute__((format(printf, 1, 2))) void ctl_fail(const char *fmt, ...);
/* The synopsis of a help text and where the rest is; returns 2. */
int ctl_usage_error(const char *help, const char *cmd);
/* getopt_long() afresh on a command's argv, naming "tallyctl COMMAND". */
void ctl_begin_options(struct ctl *ctl, char **argv);
/* A handle on the ledger directory, resolving the default first. */
int ctl_open_handle(struct ctl *ctl, const char *cmd, struct tally **t);
/* A failed read of the ledger, with what to do about it. */
void ctl_read_failed(const struct ctl *ctl, const char *cmd, int err);
/* JSON that libtally produced; NULL (reported) if it does not parse. */
json_t *ctl_load_json(const char *cmd, const char *text);
/* Columns a UTF-8 string takes. */
int ctl_text_width(const char *s);

extern const char ctl_sessions_help[];
extern const char ctl_top_help[];
extern const char ctl_export_help[];
extern const char ctl_purge_help[];
extern const char ctl_check_help[];
extern const char ctl_cost_help[];
extern const char ctl_metrics_help[];

int ctl_sessions(struct ctl *ctl, int argc, char **argv);
int ctl_top(struct ctl *ctl, int argc, char **argv);
int ctl_export(struct ctl *ctl, int argc, char **argv);
int ctl_purge(struct ctl *ctl, int argc, char **argv);
int ctl_check(struct ctl *ctl, int argc, char **argv);
int ctl_cost(struct ctl *ctl, int argc, char **argv);
int ctl_metrics(struct ctl *ctl, int argc, char **argv);

#endif
