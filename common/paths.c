#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "paths.h"

static int put(char *buf, size_t len, const char *a, const char *b)
{
	int n = snprintf(buf, len, "%s%s", a, b);

	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

int paths_default_dir(char *buf, size_t len)
{
	const char *env = getenv("TALLY_DIR");
	const char *home;

	if (buf == NULL)
		return -EINVAL;
	if (env != NULL && env[0] != '\0')
		return put(buf, len, env, "");
	if (geteuid() == 0)
		return put(buf, len, "/var/lib/tally", "");
	env = getenv("XDG_STATE_HOME");
	if (env != NULL && env[0] == '/')
		return put(buf, len, env, "/tally");
	home = getenv("HOME");
	if (home == NULL || home[0] != '/')
		return -ENOENT;
	return put(buf, len, home, "/.local/state/tally");
}

static int socket_url(char *url, size_t len, const char *dir, const char *name)
{
	char path[PATHS_SUN_MAX + 1];
	int rc;

	/* The socket's own path, not the URL, is what must fit sun_path. */
	rc = snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (rc < 0 || (size_t)rc >= sizeof(path))
		return -ENAMETOOLONG;
	return put(url, len, "ipc://", path);
}

int paths_init(struct tally_paths *p, const char *dir)
{
	int rc;

	if (dir == NULL) {
		rc = paths_default_dir(p->dir, sizeof(p->dir));
		if (rc < 0)
			return rc;
	} else if (dir[0] == '\0') {
		return -EINVAL;
	} else if ((rc = put(p->dir, sizeof(p->dir), dir, "")) < 0) {
		return rc;
	}
	rc = socket_url(p->ingest_url, sizeof(p->ingest_url), p->dir,
			PATHS_INGEST);
	if (rc == 0)
		rc = socket_url(p->control_url, sizeof(p->control_url), p->dir,
				PATHS_CONTROL);
	if (rc == 0)
		rc = put(p->ledger, sizeof(p->ledger), p->dir,
			 "/" PATHS_LEDGER);
	if (rc == 0)
		rc = put(p->lock, sizeof(p->lock), p->dir, "/" PATHS_LOCK);
	return rc;
}
