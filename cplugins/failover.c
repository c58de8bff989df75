/*
 * failover.c — an example map: try each of a user's servers, answer the
 * first that accepts a TCP connection.
 *
 *   -M /path/failover.so -m /etc/perdition/failover.map
 *
 * Each line of the file is "<key> <server>[:<port>] <server>[:<port>] ...";
 * '#' starts a comment.  A server without a port is probed on 143 and
 * returned without one (so --outgoing_port applies).  Every probe waits at
 * most PROBE_TIMEOUT_MS.  The file is read on every lookup.
 *
 * Build: gcc -shared -fPIC -o failover.so failover.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "perditiondb.h"

#define PROBE_TIMEOUT_MS 1000
#define DEFAULT_PROBE_PORT "143"

static char *map_path;

int dbserver_init(char *options_str)
{
	free(map_path);
	map_path = strdup(options_str ? options_str : "/etc/perdition/failover.map");
	return map_path ? 0 : -3;
}

int dbserver_fini(void)
{
	free(map_path);
	map_path = NULL;
	return 0;
}

/* 1 when something accepts a TCP connection at host:port within the timeout. */
static int answers(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *found, *ai;
	int alive = 0;

	if (getaddrinfo(host, port, &hints, &found) != 0)
		return 0;
	for (ai = found; ai != NULL && !alive; ai = ai->ai_next) {
		struct pollfd poller;
		int error = 0;
		socklen_t size = sizeof(error);
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK, 0);

		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			alive = 1;
		} else if (errno == EINPROGRESS) {
			poller.fd = fd;
			poller.events = POLLOUT;
			if (poll(&poller, 1, PROBE_TIMEOUT_MS) == 1 &&
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) == 0)
				alive = error == 0;
		}
		close(fd);
	}
	freeaddrinfo(found);
	return alive;
}

/* Probe one "server[:port]" word; 1 when it answers. */
static int word_answers(const char *word)
{
	char *copy = strdup(word), *host = copy, *port = DEFAULT_PROBE_PORT, *colon;
	int alive;

	if (copy == NULL)
		return 0;
	if (*host == '[') {            /* [2001:db8::1]:143 */
		char *close = strchr(host, ']');
		if (close != NULL) {
			*close = '\0';
			if (close[1] == ':')
				port = close + 2;
		}
		host++;
	} else if ((colon = strrchr(host, ':')) != NULL) {
		*colon = '\0';
		port = colon + 1;
	}
	alive = answers(host, port);
	free(copy);
	return alive;
}

int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return)
{
	FILE *file;
	char line[4096];
	int status = -2;

	(void) options_str;
	if ((file = fopen(map_path, "r")) == NULL)
		return -1;
	while (status == -2 && fgets(line, sizeof(line), file) != NULL) {
		char *save, *word = strtok_r(line, " \t\r\n", &save);

		if (word == NULL || *word == '#' || strcmp(word, key_str) != 0)
			continue;
		status = -1;       /* known key, but nothing answered (yet) */
		while ((word = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
			if (!word_answers(word))
				continue;
			if ((*str_return = strdup(word)) == NULL)
				status = -3;
			else {
				*len_return = strlen(word);
				status = 0;
			}
			break;
		}
	}
	fclose(file);
	return status;
}
