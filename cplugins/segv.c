/*
 * segv.c — a test map that crashes: the key "crash" dereferences NULL; any
 * other key is answered with the -m string.  For isolation-mode tests.
 */
#include <stdlib.h>
#include <string.h>

#include "perditiondb.h"

int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return)
{
	if (strcmp(key_str, "crash") == 0) {
		volatile int *nowhere = NULL;
		return *nowhere;
	}
	if (options_str == NULL || (*str_return = strdup(options_str)) == NULL)
		return -3;
	*len_return = strlen(options_str);
	return 0;
}
