#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define MAX_READERS 4096

/*
 * LMDB forbids opening one environment twice in a process (closing either
 * would drop the other's locks), so every handle of a process shares one
 * reader per ledger path. A reader made before a fork() belongs to the
 * parent: the child leaves it alone, neither using nor closing it, since
 * closing would clear the parent's reader slots.
 */
static pthread_mutex_t readers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reader *readers;

static int open_dbis(struct reader *r)
{
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0)
		return ledger_errno(rc);
	if ((rc = mdb_dbi_open(txn, LEDGER_DB_USAGE, 0, &r->usage)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_SESSIONS, 0, &r->sessions)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_PRODUCERS, 0, &r->producers))) {
		mdb_txn_abort(txn);
		/* A ledger without our databases is not ours. */
		return rc == MDB_NOTFOUND ? TALLY_EVERSION : ledger_errno(rc);
	}
	/* Committing, not aborting, keeps the handles for later txns. */
	return ledger_errno(mdb_txn_commit(txn));
}

static int reader_open(const char *path, struct reader **out)
{
	struct reader *r = calloc(1, sizeof(*r));
	int rc;

	if (r == NULL)
		return -ENOMEM;
	if (access(path, F_OK) < 0) {
		rc = -errno;
		goto fail;
	}
	rc = ledger_errno(mdb_env_create(&r->env));
	if (rc < 0)
		goto fail;
	mdb_env_set_maxdbs(r->env, 8);
	mdb_env_set_maxreaders(r->env, MAX_READERS);
	rc = mdb_env_open(r->env, path, MDB_RDONLY | MDB_NOTLS | MDB_NOSUBDIR,
			  0660);
	if (rc != 0)
		rc = ledger_errno(rc);
	else if ((rc = ledger_check_size(r->env)) == 0)
		rc = open_dbis(r);
	if (rc < 0)
		goto fail_env;
	pthread_rwlock_init(&r->resize, NULL);
	snprintf(r->path, sizeof(r->path), "%s", path);
	r->fork_gen = tally_fork_gen;
	r->refs = 1;
	*out = r;
	return 0;
fail_env:
	mdb_env_close(r->env);
fail:
	free(r);
	return rc;
}

int reader_get(const char *path, struct reader **out)
{
	struct reader **pp, *r;
	int rc = 0;

	pthread_mutex_lock(&readers_lock);
	for (pp = &readers; (r = *pp) != NULL;) {
		if (r->fork_gen != tally_fork_gen) {
			/* The parent's: unlink it, never close it. */
			*pp = r->next;
			continue;
		}
		if (strcmp(r->path, path) == 0)
			break;
		pp = &r->next;
	}
	if (r != NULL) {
		r->refs++;
	} else if ((rc = reader_open(path, &r)) == 0) {
		r->next = readers;
		readers = r;
	}
	pthread_mutex_unlock(&readers_lock);
	*out = rc == 0 ? r : NULL;
	return rc;
}

void reader_put(struct reader *r)
{
	struct reader **pp;

	if (r == NULL)
		return;
	pthread_mutex_lock(&readers_lock);
	if (r->fork_gen != tally_fork_gen || --r->refs > 0) {
		pthread_mutex_unlock(&readers_lock);
		return;
	}
	for (pp = &readers; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	pthread_mutex_unlock(&readers_lock);
	mdb_env_close(r->env);
	pthread_rwlock_destroy(&r->resize);
	free(r);
}

/* Adopts the map size the daemon grew the ledger to. */
static void adopt_map_size(struct reader *r)
{
	pthread_rwlock_wrlock(&r->resize);
	mdb_env_set_mapsize(r->env, 0);
	pthread_rwlock_unlock(&r->resize);
}

int reader_begin(struct reader *r, MDB_txn **txn)
{
	int rc = 0;

	/* Bounded: the map grows at most a few times between two calls. */
	for (int attempt = 0; attempt < 8; attempt++) {
		pthread_rwlock_rdlock(&r->resize);
		rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, txn);
		if (rc == 0)
			return 0;
		pthread_rwlock_unlock(&r->resize);
		if (rc == MDB_MAP_RESIZED) {
			adopt_map_size(r);
		} else if (rc == MDB_READERS_FULL) {
			int dead = 0;

			mdb_reader_check(r->env, &dead);
			if (dead == 0)
				break;
		} else {
			break;
		}
	}
	return ledger_errno(rc);
}

void reader_end(struct reader *r, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&r->resize);
}

int reader_producer_seq(struct reader *r, MDB_txn *txn, const uint8_t *id,
			uint64_t *seq)
{
	MDB_val key = {LEDGER_PRODUCER_ID_LEN, (void *)id}, val;
	struct ledger_producer p;
	int rc;

	*seq = 0;
	rc = mdb_get(txn, r->producers, &key, &val);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc != 0)
		return ledger_errno(rc);
	rc = ledger_producer_decode(&val, &p);
	if (rc == 0)
		*seq = p.seq;
	return rc;
}
