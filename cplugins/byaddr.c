/*
 * byaddr.c — an example map that routes by the client's address, read from
 * the host's peername (the lookup key is not used).
 *
 *   -M /path/byaddr.so -m /etc/perdition/byaddr.map
 *
 * Each line of the file is "<client address> <value>", the value being what
 * the map answers: [user@]server[:port].  IPv4 and IPv6 clients; the file is
 * read once, in dbserver_init (again on SIGHUP).
 *
 * Build: gcc -shared -fPIC -o byaddr.so byaddr.c
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "perditiondb.h"

struct entry {
	char address[INET6_ADDRSTRLEN];
	char *value;
};

static struct entry *entries;
static size_t entry_count;

int dbserver_fini(void)
{
	while (entry_count > 0)
		free(entries[--entry_count].value);
	free(entries);
	entries = NULL;
	return 0;
}

int dbserver_init(char *options_str)
{
	FILE *file;
	char line[1024], address[INET6_ADDRSTRLEN], value[1024];

	dbserver_fini();
	if (options_str == NULL || (file = fopen(options_str, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), file) != NULL) {
		struct entry *grown;

		if (sscanf(line, "%45s %1023s", address, value) != 2 || *address == '#')
			continue;
		grown = realloc(entries, (entry_count + 1) * sizeof(*entries));
		if (grown == NULL)
			break;
		entries = grown;
		snprintf(entries[entry_count].address, sizeof(entries->address), "%s", address);
		if ((entries[entry_count].value = strdup(value)) == NULL)
			break;
		entry_count++;
	}
	fclose(file);
	return 0;
}

/* The client's address as text, from peername; 0 on success. */
static int client_address(char *text, socklen_t size)
{
	const void *raw;

	if (peername == NULL)
		return -1;
	if (peername->ss_family == AF_INET)
		raw = &((struct sockaddr_in *) peername)->sin_addr;
	else if (peername->ss_family == AF_INET6)
		raw = &((struct sockaddr_in6 *) peername)->sin6_addr;
	else
		return -1;
	return inet_ntop(peername->ss_family, raw, text, size) ? 0 : -1;
}

int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return)
{
	char address[INET6_ADDRSTRLEN];
	size_t i;

	(void) key_str;
	(void) options_str;
	if (client_address(address, sizeof(address)) != 0)
		return -3;
	for (i = 0; i < entry_count; i++) {
		if (strcmp(entries[i].address, address) != 0)
			continue;
		if ((*str_return = strdup(entries[i].value)) == NULL)
			return -3;
		*len_return = strlen(*str_return);
		return 0;
	}
	return -2;
}
