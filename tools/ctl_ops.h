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
