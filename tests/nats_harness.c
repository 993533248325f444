#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "nats_harness.h"

#define MAX_ARGS 32
#define START_WAIT_MS 5000
#define STOP_WAIT_MS 5000
#define PORTS_REMEMBERED 64

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in sa;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sa;
}

/* The kernel's choice of an unused port; it may repeat once released. */
static int kernel_port(void)
{
	struct sockaddr_in sa = loopback(0);
	socklen_t len = sizeof(sa);
	int fd, port = -1;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

int nats_free_port(void)
{
	static int given[PORTS_REMEMBERED];
	static unsigned n_given;

	for (int tries = 0; tries < 100; tries++) {
		int port = kernel_port();
		bool seen = false;

		if (port < 0)
			return -1;
		for (unsigned i = 0; i < n_given && i < PORTS_REMEMBERED; i++)
			seen = seen || given[i] == port;
		if (seen)
			continue;
		given[n_given++ % PORTS_REMEMBERED] = port;
		return port;
	}
	return -1;
}

int nats_wait_port(int port, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	struct sockaddr_in sa = loopback(port);

	while (mono_ms() < deadline) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int rc;

		if (fd < 0)
			return -errno;
		rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
		close(fd);
		if (rc == 0)
			return 0;
		harness_sleep_ms(20);
	}
	return -ETIMEDOUT;
}

static void child_exec(const char *dir, const char *const *argv)
{
	char log[512];
	int fd;

	/* A test that dies (a sanitizer abort) takes its servers along. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	snprintf(log, sizeof(log), "%s/nats.log", dir);
	fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

	/* Never the test's own stdout: meson waits for it to close. */
	if (fd >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
	}
	execv(argv[0], (char *const *)argv);
	_exit(127);
}

pid_t nats_start(const char *dir, int port, int cluster_port,
		 const char *routes, const char *name)
{
	const char *bin = getenv("NATS_SERVER");
	char port_s[16], cluster_s[64];
	const char *argv[MAX_ARGS];
	int n = 0;
	pid_t pid;

	snprintf(port_s, sizeof(port_s), "%d", port);
	snprintf(cluster_s, sizeof(cluster_s), "nats://127.0.0.1:%d",
		 cluster_port);
	argv[n++] =
		bin != NULL && bin[0] != '\0' ? bin : "/usr/bin/nats-server";
	argv[n++] = "-js";
	argv[n++] = "-a";
	argv[n++] = "127.0.0.1";
	argv[n++] = "-p";
	argv[n++] = port_s;
	argv[n++] = "-sd";
	argv[n++] = dir;
	argv[n++] = "-n";
	argv[n++] = name;
	if (cluster_port > 0) {
		argv[n++] = "--cluster_name";
		argv[n++] = "tally";
		argv[n++] = "--cluster";
		argv[n++] = cluster_s;
	}
	if (cluster_port > 0 && routes != NULL && routes[0] != '\0') {
		argv[n++] = "--routes";
		argv[n++] = routes;
	}
	argv[n] = NULL;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0)
		child_exec(dir, argv);
	if (nats_wait_port(port, START_WAIT_MS) == 0)
		return pid;
	harness_stop(pid, SIGKILL, STOP_WAIT_MS);
	return -1;
}

int nats_stop(pid_t pid)
{
	int rc;

	if (pid <= 0)
		return 0;
	rc = harness_stop(pid, SIGTERM, STOP_WAIT_MS);
	/* nats-server exits with status 1 after a SIGTERM it handled. */
	return rc >= 0 && rc < 128 ? 0 : -1;
}

/* ---- a bare NATS request, in the text protocol ---- */

#define REQ_INBOX "_INBOX.tally_harness"

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads more into buf[*len]; waits at most until deadline. */
static int read_more(int fd, char *buf, size_t *len, size_t cap,
		     uint64_t deadline)
{
	struct timeval tv;
	uint64_t now = mono_ms();
	ssize_t n;

	if (now >= deadline || *len + 1 >= cap)
		return -ETIMEDOUT;
	tv.tv_sec = (time_t)((deadline - now) / 1000);
	tv.tv_usec = (suseconds_t)((deadline - now) % 1000 * 1000);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	n = recv(fd, buf + *len, cap - 1 - *len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -ETIMEDOUT;
	if (n <= 0)
		return -EIO;
	*len += (size_t)n;
	buf[*len] = '\0';
	return 0;
}

/* Finds "MSG <inbox> 1 <n>\r\n<payload>\r\n" in buf; 1 once it is whole. */
static int parse_reply(const char *buf, size_t len, char *reply, size_t size)
{
	const char *msg = strstr(buf, "MSG " REQ_INBOX " 1 ");
	const char *eol, *data;
	unsigned long n;

	if (msg == NULL || (eol = strstr(msg, "\r\n")) == NULL)
		return 0;
	n = strtoul(msg + strlen("MSG " REQ_INBOX " 1 "), NULL, 10);
	data = eol + 2;
	if ((size_t)(data - buf) + n + 2 > len)
		return 0;
	snprintf(reply, size, "%.*s", (int)(n < size ? n : size - 1), data);
	return 1;
}

int nats_request(int port, const char *subject, const char *payload,
		 char *reply, size_t size, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	struct sockaddr_in sa = loopback(port);
	char out[1024], in[8192] = "";
	size_t len = 0;
	int fd, n, rc;

	n = snprintf(out, sizeof(out),
		     "CONNECT {\"verbose\":false,\"pedantic\":false}\r\n"
		     "SUB " REQ_INBOX " 1\r\nPUB %s " REQ_INBOX
		     " %zu\r\n%s\r\n",
		     subject, strlen(payload), payload);
	if (n < 0 || (size_t)n >= sizeof(out) || size == 0)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
	/* The server speaks first (INFO); then the request goes. */
	while (rc == 0 && strstr(in, "\r\n") == NULL)
		rc = read_more(fd, in, &len, sizeof(in), deadline);
	if (rc == 0)
		rc = send_all(fd, out, (size_t)n);
	len = 0;
	in[0] = '\0';
	while (rc == 0 && !parse_reply(in, len, reply, size)) {
		rc = read_more(fd, in, &len, sizeof(in), deadline);
		/* A PING from the server wants its PONG. */
		if (rc == 0 && strstr(in, "PING\r\n") != NULL &&
		    strstr(in, "MSG ") == NULL) {
			rc = send_all(fd, "PONG\r\n", 6);
			len = 0;
			in[0] = '\0';
		}
	}
	close(fd);
	return rc;
}
