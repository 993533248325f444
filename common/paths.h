/*
 * paths.h - where the ledger, the sockets and the lock file of one ledger
 * directory live.
 */
#ifndef TALLY_PATHS_H
#define TALLY_PATHS_H

#include <stddef.h>

/* sun_path holds 108 bytes with its NUL. */
#define PATHS_SUN_MAX 107

#define PATHS_LEDGER "ledger.mdb"
#define PATHS_INGEST "ingest.ipc"
#define PATHS_CONTROL "control.ipc"
#define PATHS_LOCK "tallyd.lock"

struct tally_paths {
	char dir[PATHS_SUN_MAX + 1];
	char ledger[PATHS_SUN_MAX + 16];
	char lock[PATHS_SUN_MAX + 16];
	/* nanomsg addresses: "ipc://" and the socket's path. */
	char ingest_url[PATHS_SUN_MAX + 8];
	char control_url[PATHS_SUN_MAX + 8];
};

/*
 * paths_default_dir() - $TALLY_DIR, else /var/lib/tally for root, else
 * ${XDG_STATE_HOME:-$HOME/.local/state}/tally.
 * Errors: -ENOENT (no $HOME), -ENAMETOOLONG.
 */
int paths_default_dir(char *buf, size_t len);

/*
 * paths_init() - fill p for dir (NULL: the default directory).
 * Errors: those of paths_default_dir(), -EINVAL for an empty dir, and
 * -ENAMETOOLONG when a socket path would not fit sun_path.
 */
int paths_init(struct tally_paths *p, const char *dir);

#endif
