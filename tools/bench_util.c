#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"

static int put(char *buf, size_t len, const char *path)
{
	char real[PATH_MAX];

	if (access(path, X_OK) < 0 || realpath(path, real) == NULL)
		return -ENOENT;
	if (snprintf(buf, len, "%s", real) >= (int)len)
		return -ENAMETOOLONG;
	return 0;
}

int bench_find_tallyd(const char *given, char *buf, size_t len)
{
	const char *env = getenv("TALLYD");
	char self[PATH_MAX], path[PATH_MAX + 32], *here;
	ssize_t n;

	if (given != NULL && given[0] != '\0')
		return put(buf, len, given);
	if (env != NULL && env[0] != '\0')
		return put(buf, len, env);
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -ENOENT;
	self[n] = '\0';
	here = dirname(self);
	snprintf(path, sizeof(path), "%s/tallyd", here);
	if (put(buf, len, path) == 0)
		return 0;
	snprintf(path, sizeof(path), "%s/../daemon/tallyd", here);
	return put(buf, len, path);
}

void bench_print_command(int argc, char **argv)
{
	const char *safe =
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		"0123456789_./=:,+-@%";

	for (int i = 0; i < argc; i++) {
		if (i > 0)
			putchar(' ');
		if (argv[i][0] != '\0' &&
		    strspn(argv[i], safe) == strlen(argv[i])) {
			fputs(argv[i], stdout);
			continue;
		}
		putchar('\'');
		for (const char *p = argv[i]; *p != '\0'; p++) {
			if (*p == '\'')
				fputs("'\\''", stdout);
			else
				putchar(*p);
		}
		putchar('\'');
	}
	putchar('\n');
}

pid_t bench_spawn_tallyd(const char *tallyd, const char *dir)
{
	char log[PATH_MAX + 16];
	pid_t pid;

	snprintf(log, sizeof(log), "%s/tallyd.log", dir);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (freopen(log, "a", stderr) == NULL)
			_exit(126);
		execl(tallyd, tallyd, "--dir", dir, "-q", (char *)NULL);
		_exit(127);
	}
	return pid;
}
