#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

#include "ledger_format.h"
#include "tally.h"

/*
 * A usage value: a version byte, a spare byte, three u16 name lengths,
 * the counters, first and last activity, then the names back to back.
 */
#define ENTRY_VERSION 1
#define ENTRY_HEADER (8 + 8 * (LEDGER_NCOUNTERS + 2))
#define SESSION_VERSION 1

size_t ledger_key(char *buf, const char *session, size_t session_len,
		  const char *llm, size_t llm_len)
{
	memcpy(buf, session, session_len);
	buf[session_len] = '\0';
	memcpy(buf + session_len + 1, llm, llm_len);
	return session_len + 1 + llm_len;
}

int ledger_key_split(const MDB_val *key, const char **llm, size_t *llm_len)
{
	const char *sep = memchr(key->mv_data, '\0', key->mv_size);

	if (sep == NULL)
		return TALLY_ECORRUPT;
	*llm = sep + 1;
	*llm_len = key->mv_size - (size_t)(sep + 1 - (char *)key->mv_data);
	return 0;
}

size_t ledger_entry_size(const struct ledger_entry *e)
{
	size_t n = ENTRY_HEADER;

	for (int i = 0; i < LEDGER_NNAMES; i++)
		n += e->name_len[i];
	return n;
}

void ledger_entry_encode(const struct ledger_entry *e, void *dst)
{
	unsigned char *p = dst;

	p[0] = ENTRY_VERSION;
	p[1] = 0;
	memcpy(p + 2, e->name_len, sizeof(e->name_len));
	memcpy(p + 8, &e->c, sizeof(e->c));
	memcpy(p + 8 + sizeof(e->c), &e->first_ns, 8);
	memcpy(p + 16 + sizeof(e->c), &e->last_ns, 8);
	p += ENTRY_HEADER;
	for (int i = 0; i < LEDGER_NNAMES; i++) {
		if (e->name_len[i] == 0)
			continue;
		memcpy(p, e->name[i], e->name_len[i]);
		p += e->name_len[i];
	}
}

int ledger_entry_decode(const MDB_val *v, struct ledger_entry *e)
{
	const unsigned char *p = v->mv_data;
	size_t names = 0;

	if (v->mv_size < ENTRY_HEADER || p[0] != ENTRY_VERSION)
		return TALLY_ECORRUPT;
	memcpy(e->name_len, p + 2, sizeof(e->name_len));
	memcpy(&e->c, p + 8, sizeof(e->c));
	memcpy(&e->first_ns, p + 8 + sizeof(e->c), 8);
	memcpy(&e->last_ns, p + 16 + sizeof(e->c), 8);
	for (int i = 0; i < LEDGER_NNAMES; i++) {
		e->name[i] = (const char *)p + ENTRY_HEADER + names;
		names += e->name_len[i];
	}
	if (ENTRY_HEADER + names != v->mv_size)
		return TALLY_ECORRUPT;
	return 0;
}

void ledger_session_encode(const struct ledger_session *s, void *dst)
{
	unsigned char *p = dst;
	uint64_t f[5] = {s->first_ns, s->last_ns, s->input, s->output,
			 s->calls};

	memset(p, 0, 8);
	p[0] = SESSION_VERSION;
	memcpy(p + 8, f, sizeof(f));
}

int ledger_session_decode(const MDB_val *v, struct ledger_session *s)
{
	const unsigned char *p = v->mv_data;
	uint64_t f[5];

	if (v->mv_size != LEDGER_SESSION_SIZE || p[0] != SESSION_VERSION)
		return TALLY_ECORRUPT;
	memcpy(f, p + 8, sizeof(f));
	s->first_ns = f[0];
	s->last_ns = f[1];
	s->input = f[2];
	s->output = f[3];
	s->calls = f[4];
	return 0;
}

static bool producer_extended(const struct ledger_producer *p)
{
	static const uint8_t zero[LEDGER_PRODUCER_ID_LEN];

	return p->flags != 0 || p->nranges != 0 ||
	       memcmp(p->node, zero, sizeof(zero)) != 0;
}

size_t ledger_producer_size(const struct ledger_producer *p)
{
	return producer_extended(p)
		       ? LEDGER_PRODUCER_EXT_SIZE + 16 * (size_t)p->nranges
		       : LEDGER_PRODUCER_SIZE;
}

void ledger_producer_encode(const struct ledger_producer *p, void *dst)
{
	char *d = dst;

	memcpy(d, &p->seq, 8);
	memcpy(d + 8, &p->last_ns, 8);
	if (!producer_extended(p))
		return;
	memcpy(d + 16, p->node, LEDGER_PRODUCER_ID_LEN);
	memcpy(d + 32, &p->flags, 4);
	memcpy(d + 36, &p->nranges, 4);
	memcpy(d + 40, p->ranges, 16 * (size_t)p->nranges);
}

int ledger_producer_decode(const MDB_val *v, struct ledger_producer *p)
{
	const char *s = v->mv_data;

	memset(p, 0, sizeof(*p));
	if (v->mv_size != LEDGER_PRODUCER_SIZE &&
	    v->mv_size < LEDGER_PRODUCER_EXT_SIZE)
		return TALLY_ECORRUPT;
	memcpy(&p->seq, s, 8);
	memcpy(&p->last_ns, s + 8, 8);
	if (v->mv_size == LEDGER_PRODUCER_SIZE)
		return 0;
	memcpy(p->node, s + 16, LEDGER_PRODUCER_ID_LEN);
	memcpy(&p->flags, s + 32, 4);
	memcpy(&p->nranges, s + 36, 4);
	if (p->nranges > LEDGER_RANGES_MAX ||
	    v->mv_size != LEDGER_PRODUCER_EXT_SIZE + 16 * (size_t)p->nranges)
		return TALLY_ECORRUPT;
	memcpy(p->ranges, s + 40, 16 * (size_t)p->nranges);
	return 0;
}

int ledger_counters_add(struct ledger_counters *a,
			const struct ledger_counters *b)
{
	uint64_t x[LEDGER_NCOUNTERS], y[LEDGER_NCOUNTERS];

	memcpy(x, a, sizeof(x));
	memcpy(y, b, sizeof(y));
	for (size_t i = 0; i < LEDGER_NCOUNTERS; i++)
		if (__builtin_add_overflow(x[i], y[i], &x[i]))
			return -EOVERFLOW;
	memcpy(a, x, sizeof(x));
	return 0;
}

int ledger_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_READERS_FULL:
		return -EAGAIN;
	case MDB_VERSION_MISMATCH:
		return TALLY_EVERSION;
	case MDB_INVALID:
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_BAD_VALSIZE:
		return TALLY_ECORRUPT;
	default:
		return rc > 0 ? -rc : -EIO;
	}
}

int ledger_check_size(MDB_env *env)
{
	MDB_envinfo info;
	MDB_stat st;
	struct stat fs;
	mdb_filehandle_t fd;

	if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &st) != 0 ||
	    mdb_env_get_fd(env, &fd) != 0 || fstat(fd, &fs) < 0)
		return -EIO;
	if ((uint64_t)fs.st_size <
	    ((uint64_t)info.me_last_pgno + 1) * st.ms_psize)
		return TALLY_ECORRUPT;
	return 0;
}
