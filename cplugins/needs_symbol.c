/*
 * needs_symbol.c — a test map that calls a host function perdition never
 * exported: loading it must fail with an error naming the symbol.
 */
#include <stddef.h>

extern int perdition_symbol_nobody_exports(const char *key);

int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return)
{
	(void) options_str;
	(void) str_return;
	(void) len_return;
	return perdition_symbol_nobody_exports(key_str);
}
