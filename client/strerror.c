#include <errno.h>
#include <string.h>

#include "tally.h"

/* What an errno means when this library returns it. */
static const struct {
	int err;
	const char *text;
} texts[] = {
	{-EINVAL, "invalid argument: an id is empty or too long, a name "
		  "too long, or a detail count larger than its total"},
	{-EILSEQ, "a string is not valid UTF-8"},
	{-ERANGE, "a token count is negative or above the limit of "
		  "1000000000 per usage"},
	{-ENOBUFS, "the queue of unconfirmed usages is full: tallyd is not "
		   "running or not keeping up"},
	{-ETIMEDOUT, "tallyd did not confirm in time: is it running on this "
		     "directory?"},
	{-ENOENT, "not found: no ledger in the directory (tallyd has never "
		  "run there), or a tokenizer rank file not installed (run "
		  "tools/setup)"},
	{-ENODATA, "the response carries no usage report"},
	{-EMSGSIZE, "the usage is larger than the handle's message limit "
		    "(max_message)"},
	{-EBADMSG, "the response or message is malformed"},
	{-EPROTONOSUPPORT, "unknown provider type"},
	{-ENAMETOOLONG, "the directory is too long for a Unix socket path "
			"(107 bytes)"},
	{TALLY_EVERSION, "the ledger was written by an incompatible version "
			 "of tally"},
	{TALLY_ECORRUPT, "the ledger is damaged: a record did not decode"},
};

const char *tally_strerror(int err)
{
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		if (texts[i].err == err)
			return texts[i].text;
	if (err == 0)
		return "success";
	if (err < 0 && err > -4096)
		return strerrordesc_np(-err);
	return "unknown error";
}
