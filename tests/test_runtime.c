/*
 * The daemon's runtime checks that need no daemon: which filesystems are
 * refused, and the descriptors it starts with.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "tallyd.h"

/* statfs() magic numbers, as the kernel's magic.h gives them. */
#define NFS_MAGIC 0x6969
#define SMB2_MAGIC 0xfe534d42
#define CIFS_MAGIC 0xff534d42
#define TMPFS_MAGIC 0x01021994
#define EXT4_MAGIC 0xef53

static void test_runtime_refuses_network_filesystems(void **state)
{
	assert_string_equal(runtime_remote_fs(NFS_MAGIC), "nfs");
	assert_string_equal(runtime_remote_fs(SMB2_MAGIC), "smb2");
	assert_string_equal(runtime_remote_fs(CIFS_MAGIC), "cifs");
}

static void test_runtime_accepts_local_filesystems(void **state)
{
	assert_null(runtime_remote_fs(TMPFS_MAGIC));
	assert_null(runtime_remote_fs(EXT4_MAGIC));
	assert_int_equal(runtime_check_fs("/tmp"), 0);
	assert_int_equal(runtime_check_fs("/nonexistent/tally"), -ENOENT);
}

static void test_runtime_std_fds_reopened(void **state)
{
	int saved = dup(0);

	assert_true(saved > 2);
	close(0);
	assert_int_equal(runtime_std_fds(), 0);
	/* Something valid now sits on 0, so the next open() is above 2. */
	assert_true(fcntl(0, F_GETFD) >= 0);
	dup2(saved, 0);
	close(saved);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_runtime_refuses_network_filesystems),
		cmocka_unit_test(test_runtime_accepts_local_filesystems),
		cmocka_unit_test(test_runtime_std_fds_reopened),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
