#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>

#include "tallyd.h"

/*
 * A daemon started with 0, 1 or 2 closed would get them back from its
 * first open(): the lock file or the ledger would then receive whatever
 * is written to stdout or stderr. /dev/null takes them first.
 */
int runtime_std_fds(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
			continue;
		if (open("/dev/null", O_RDWR) != fd)
			return -EBADF;
	}
	return 0;
}

/*
 * Libraries open descriptors of their own (LMDB's data file is not
 * close-on-exec); marking all of them keeps any child of this process
 * from holding the ledger or a socket open.
 */
void runtime_cloexec_all(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		int fd = atoi(e->d_name);
		int flags;

		if (fd <= 2 || fd == dirfd(d))
			continue;
		flags = fcntl(fd, F_GETFD);
		if (flags >= 0 && !(flags & FD_CLOEXEC))
			fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
	}
	closedir(d);
}

/* Filesystems whose locking LMDB cannot trust, by statfs() magic. */
static const struct {
	unsigned long magic;
	const char *name;
} remote_fs[] = {
	{0x6969, "nfs"},	{0xff534d42, "cifs"}, {0xfe534d42, "smb2"},
	{0x517b, "smb"},	{0x01021997, "9p"},   {0x65735546, "fuse"},
	{0x5346414f, "afs"},	{0x00c36400, "ceph"}, {0x47504653, "gpfs"},
	{0x0bd00bd0, "lustre"},
};

const char *runtime_remote_fs(unsigned long magic)
{
	for (size_t i = 0; i < sizeof(remote_fs) / sizeof(remote_fs[0]); i++)
		if (remote_fs[i].magic == magic)
			return remote_fs[i].name;
	return NULL;
}

/*
 * LMDB's locks live in a shared memory map and fcntl() locks: on a
 * network filesystem they do not hold between hosts, and two writers
 * would corrupt the ledger. Such a directory is refused at start.
 */
int runtime_check_fs(const char *dir)
{
	struct statfs st;
	const char *name;

	if (statfs(dir, &st) < 0)
		return -errno;
	name = runtime_remote_fs((unsigned long)st.f_type);
	if (name == NULL)
		return 0;
	log_err("main",
		"%s is on a network filesystem (%s, magic 0x%lx): LMDB's locking does not work there; use a local directory",
		dir, name, (unsigned long)st.f_type);
	return -EREMOTE;
}

/* Creates dir and its missing parents; the last one is 0750. */
int runtime_prepare_dir(const char *dir)
{
	char path[PATH_MAX];
	size_t n = strlen(dir);

	if (n >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, n + 1);
	for (char *p = path + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static long read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtol(buf, NULL, 10);
}

/*
 * The lock file proves that no live daemon owns the directory: the kernel
 * drops the lock with its holder, so a killed daemon leaves no stale lock,
 * and only the holder may remove sockets a previous daemon left behind.
 */
int runtime_lock(struct tallyd *d)
{
	char pid[32];
	int fd, n;

	fd = open(d->paths.lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		log_err("main", "cannot open lock file %s: %s", d->paths.lock,
			strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int err = errno;

		if (err == EWOULDBLOCK)
			log_err("main", "already running, pid %ld, on %s",
				read_pid(fd), d->paths.dir);
		else
			log_err("main", "cannot lock %s: %s", d->paths.lock,
				strerror(err));
		close(fd);
		return err == EWOULDBLOCK ? -EBUSY : -err;
	}
	n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
		log_warn("main", "cannot write pid to %s: %s", d->paths.lock,
			 strerror(errno));
	d->lock_fd = fd;
	return 0;
}

void runtime_unlock(struct tallyd *d)
{
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	d->lock_fd = -1;
}

static const char *socket_path(const char *url)
{
	return url + strlen("ipc://");
}

/* Gives the sockets to the configured group: mode 0660, checked. */
static int restrict_socket(struct tallyd *d, const char *path, gid_t gid)
{
	struct stat st;

	if (gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0)
		return -errno;
	if (chmod(path, 0660) < 0)
		return -errno;
	if (stat(path, &st) < 0)
		return -errno;
	if ((st.st_mode & 0777) != 0660) {
		log_err("main", "%s has mode %o after chmod", path,
			(unsigned)(st.st_mode & 0777));
		return -EPERM;
	}
	return 0;
}

/*
 * The directory: 0750, so that the group may reach the sockets and read
 * the ledger, and only the daemon's user may create or remove anything.
 */
static int restrict_dir(const char *dir, gid_t gid)
{
	struct stat st;

	if (gid != (gid_t)-1 && chown(dir, (uid_t)-1, gid) < 0)
		return -errno;
	if (chmod(dir, 0750) < 0 || stat(dir, &st) < 0)
		return -errno;
	if ((st.st_mode & 0777) != 0750 ||
	    (gid != (gid_t)-1 && st.st_gid != gid)) {
		log_err("main", "%s has mode %o, group %u after chmod", dir,
			(unsigned)(st.st_mode & 0777), (unsigned)st.st_gid);
		return -EPERM;
	}
	return 0;
}

static int lookup_group(const char *name, gid_t *gid);

/*
 * Readers need the data file readable and the lock file writable (their
 * reader slots live there): 0640 and 0660, given to --group if any.
 */
int runtime_share_ledger(struct tallyd *d)
{
	const struct {
		const char *suffix;
		mode_t mode;
	} files[] = {{"", 0640}, {"-lock", 0660}};
	char path[sizeof(d->paths.ledger) + 8];
	gid_t gid;
	int rc;

	if ((rc = lookup_group(d->cfg.group, &gid)) < 0)
		return rc;
	for (size_t i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s%s", d->paths.ledger,
			 files[i].suffix);
		if ((gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0) ||
		    chmod(path, files[i].mode) < 0) {
			log_err("main", "cannot share %s with group %s: %s",
				path, d->cfg.group ? d->cfg.group : "(own)",
				strerror(errno));
			return -errno;
		}
	}
	return 0;
}

static int lookup_group(const char *name, gid_t *gid)
{
	struct group *g;

	*gid = (gid_t)-1;
	if (name == NULL)
		return 0;
	g = getgrnam(name);
	if (g == NULL) {
		log_err("main", "no group named '%s' (--group)", name);
		return -ENOENT;
	}
	*gid = g->gr_gid;
	return 0;
}

static int open_socket(int protocol, int domain, const char *url,
		       size_t max_message)
{
	int s = nn_socket(domain, protocol);
	int size = (int)max_message;

	if (s < 0)
		return -nn_errno();
	/*
	 * nanomsg cuts the connection of a sender whose message is over its
	 * limit; keep its limit well above ours so that we see, count and
	 * drop oversized messages ourselves.
	 */
	size = max_message > INT_MAX / 4 ? -1 : (int)(max_message * 4);
	if (nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &size,
			  sizeof(size)) < 0 ||
	    nn_bind(s, url) < 0) {
		int err = nn_errno();

		nn_close(s);
		return -err;
	}
	return s;
}

int runtime_bind(struct tallyd *d)
{
	mode_t old;
	gid_t gid;
	int rc;

	rc = lookup_group(d->cfg.group, &gid);
	if (rc < 0)
		return rc;
	/* Under the lock: what is there was left by a dead daemon. */
	unlink(socket_path(d->paths.ingest_url));
	unlink(socket_path(d->paths.control_url));
	old = umask(0117);
	d->ingest = open_socket(NN_PULL, AF_SP, d->paths.ingest_url,
				d->cfg.max_message);
	d->control = d->ingest < 0 ? d->ingest
				   : open_socket(NN_REP, AF_SP_RAW,
						 d->paths.control_url, 65536);
	umask(old);
	if (d->ingest < 0 || d->control < 0) {
		rc = d->ingest < 0 ? d->ingest : d->control;
		log_err("main", "cannot bind sockets in %s: %s", d->paths.dir,
			strerror(-rc));
		runtime_unbind(d);
		return rc;
	}
	if ((rc = restrict_socket(d, socket_path(d->paths.ingest_url), gid)) ||
	    (rc = restrict_socket(d, socket_path(d->paths.control_url), gid)) ||
	    (rc = restrict_dir(d->paths.dir, gid))) {
		log_err("main", "cannot restrict sockets in %s: %s",
			d->paths.dir, strerror(-rc));
		runtime_unbind(d);
		return rc;
	}
	return 0;
}

void runtime_unbind(struct tallyd *d)
{
	if (d->ingest >= 0)
		nn_close(d->ingest);
	if (d->control >= 0)
		nn_close(d->control);
	if (d->ingest >= 0 || d->control >= 0) {
		unlink(socket_path(d->paths.ingest_url));
		unlink(socket_path(d->paths.control_url));
	}
	d->ingest = -1;
	d->control = -1;
}

/*
 * Tells systemd (Type=notify) what the daemon is doing, by the documented
 * protocol: one datagram to the socket named by $NOTIFY_SOCKET ('@' for
 * the abstract namespace). Without that variable it does nothing.
 */
void runtime_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    strlen(path) >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, strlen(path));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
			  strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL,
		   (struct sockaddr *)&sa, len) < 0)
		log_warn("main", "cannot notify systemd at %s: %s", path,
			 strerror(errno));
	close(fd);
}
