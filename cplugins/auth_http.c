/*
 * auth_http.c — an example map driven by an NGINX mail auth_http service
 * (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html), the C
 * twin of plugins/nginx_auth_http.py.
 *
 *   -M /path/auth_http.so -m "http://127.0.0.1:9000/auth [protocol=imap] [timeout=5]"
 *
 * Each lookup sends what NGINX's mail proxy sends:
 *
 *   GET /auth HTTP/1.0
 *   Host: 127.0.0.1:9000
 *   Auth-Method: none
 *   Auth-User: <key, URL-encoded as NGINX does>
 *   Auth-Protocol: imap
 *   Auth-Login-Attempt: 1
 *   Client-IP: <the client's address, from the host's peername>
 *
 * and reads the reply's headers (at most MAX_REPLY bytes, within timeout=
 * seconds in all).  "Auth-Status: OK" with Auth-Server (an address) and
 * Auth-Port answers [<Auth-User>@]server:port; any other Auth-Status is
 * "not found" (-2).  The service unreachable, silent, not answering 200 or
 * answering nonsense is an access error (-1); a bad -m is -3 (and stops the
 * start, from dbserver_init).
 *
 * A map sees the user name, never the password (the back-end checks it, as
 * under perdition), so the request says "Auth-Method: none" and has no
 * Auth-Pass.  http:// only; no libcurl, POSIX sockets.  No global state: the
 * -m string is parsed again on each lookup (it is short), so the library is
 * safe however the host calls it.
 *
 * Build: gcc -shared -fPIC -o auth_http.so auth_http.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "perditiondb.h"

#define FOUND 0
#define ACCESS_ERROR -1
#define NOT_FOUND -2
#define OTHER_ERROR -3

#define DEFAULT_TIMEOUT_S 5
#define MAX_TIMEOUT_S 300
#define MAX_REPLY 8192          /* bytes of status line + headers */
#define MAX_KEY 512             /* bytes of key, before URL-encoding */
#define MAX_FIELD 256           /* host, port, protocol */
#define MAX_PATH 1024

struct config {
	char host[MAX_FIELD];       /* without the [] of an IPv6 literal */
	char port[8];
	char authority[MAX_FIELD];  /* host[:port] as written, for Host: */
	char path[MAX_PATH];
	char protocol[16];
	int timeout_s;
};

/* ------------------------------------------------------------------ -m */

/* 1 when text is printable ASCII without spaces (safe in a request line or header). */
static int plain(const char *text)
{
	for (; *text; text++)
		if (*text <= ' ' || *text >= 0x7f)
			return 0;
	return 1;
}

/* 1 when every byte of text is in allowed (and text is not empty). */
static int only(const char *text, const char *allowed)
{
	return *text != '\0' && text[strspn(text, allowed)] == '\0';
}

static int copy(char *to, size_t size, const char *from, size_t length)
{
	if (length >= size)
		return -1;
	memcpy(to, from, length);
	to[length] = '\0';
	return 0;
}

/* "http://host[:port][/path]" into config; 0 on success. */
static int parse_url(struct config *config, const char *url, size_t length)
{
	const char *authority = url + 7, *end = url + length, *slash, *colon;
	size_t host_length;

	if (length < 8 || strncmp(url, "http://", 7) != 0)
		return -1;
	slash = memchr(authority, '/', (size_t) (end - authority));
	if (slash == NULL)
		slash = end;
	if (copy(config->authority, sizeof(config->authority), authority,
		 (size_t) (slash - authority)) != 0 ||
	    copy(config->path, sizeof(config->path), slash == end ? "/" : slash,
		 slash == end ? 1 : (size_t) (end - slash)) != 0)
		return -1;
	if (*authority == '[') {                 /* [2001:db8::1]:9000 */
		const char *close = memchr(authority, ']', (size_t) (slash - authority));
		if (close == NULL)
			return -1;
		colon = close + 1 < slash && close[1] == ':' ? close + 1 : NULL;
		authority++;
		host_length = (size_t) (close - authority);
	} else {
		colon = memchr(authority, ':', (size_t) (slash - authority));
		host_length = (size_t) ((colon ? colon : slash) - authority);
	}
	if (host_length == 0 || copy(config->host, sizeof(config->host), authority, host_length))
		return -1;
	if (colon == NULL)
		strcpy(config->port, "80");
	else if (copy(config->port, sizeof(config->port), colon + 1, (size_t) (slash - colon - 1)) ||
		 !only(config->port, "0123456789"))
		return -1;
	return plain(config->authority) && plain(config->path) ? 0 : -1;
}

/* One "name=value" setting after the URL; 0 on success. */
static int parse_setting(struct config *config, const char *word, size_t length)
{
	char value[MAX_FIELD], *end;
	long number;

	if (length > 9 && strncmp(word, "protocol=", 9) == 0) {
		if (copy(value, sizeof(value), word + 9, length - 9) != 0 ||
		    (strcmp(value, "imap") != 0 && strcmp(value, "pop3") != 0))
			return -1;
		strcpy(config->protocol, value);
		return 0;
	}
	if (length > 8 && strncmp(word, "timeout=", 8) == 0) {
		if (copy(value, sizeof(value), word + 8, length - 8) != 0)
			return -1;
		errno = 0;
		number = strtol(value, &end, 10);
		if (errno != 0 || *end != '\0' || number < 1 || number > MAX_TIMEOUT_S)
			return -1;
		config->timeout_s = (int) number;
		return 0;
	}
	return -1;
}

/* The -m string into config; 0 on success. */
static int parse_options(struct config *config, const char *options)
{
	const char *word = options;
	int first = 1;

	memset(config, 0, sizeof(*config));
	strcpy(config->protocol, "imap");
	config->timeout_s = DEFAULT_TIMEOUT_S;
	if (options == NULL)
		return -1;
	while (*word) {
		size_t length;

		while (*word == ' ' || *word == '\t')
			word++;
		length = strcspn(word, " \t");
		if (length == 0)
			break;
		if ((first ? parse_url(config, word, length) : parse_setting(config, word, length)) != 0)
			return -1;
		first = 0;
		word += length;
	}
	return first ? -1 : 0;
}

int dbserver_init(char *options_str)
{
	struct config config;

	if (parse_options(&config, options_str) != 0) {
		fprintf(stderr, "auth_http: -m must be \"http://host[:port]/path"
			" [protocol=imap|pop3] [timeout=1..%d]\"\n", MAX_TIMEOUT_S);
		return OTHER_ERROR;
	}
	return 0;
}

int dbserver_fini(void)
{
	return 0;
}

/* ------------------------------------------------------------------ request */

/* NGINX's escaping of Auth-User (ngx_escape_uri, NGX_ESCAPE_MAIL_AUTH):
 * space " # % ' controls and bytes >= 0x7f become %XX; CR/LF cannot pass. */
static void escape(char *to, const char *from)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *from; from++) {
		unsigned char byte = (unsigned char) *from;

		if (byte <= ' ' || byte >= 0x7f || strchr("\"#%'", byte) != NULL) {
			*to++ = '%';
			*to++ = hex[byte >> 4];
			*to++ = hex[byte & 0xf];
		} else {
			*to++ = (char) byte;
		}
	}
	*to = '\0';
}

/* "Client-IP: <address>\r\n" from peername, or "" when the host does not know it. */
static void client_ip_header(char *header, size_t size)
{
	char text[INET6_ADDRSTRLEN];
	const void *raw = NULL;

	header[0] = '\0';
	if (peername == NULL)
		return;
	if (peername->ss_family == AF_INET)
		raw = &((struct sockaddr_in *) peername)->sin_addr;
	else if (peername->ss_family == AF_INET6)
		raw = &((struct sockaddr_in6 *) peername)->sin6_addr;
	if (raw != NULL && inet_ntop(peername->ss_family, raw, text, sizeof(text)) != NULL)
		snprintf(header, size, "Client-IP: %s\r\n", text);
}

/* The whole request in a malloc()ed string, or NULL. */
static char *request_text(const struct config *config, const char *key)
{
	char user[MAX_KEY * 3 + 1], client_ip[INET6_ADDRSTRLEN + 16], *text;

	escape(user, key);
	client_ip_header(client_ip, sizeof(client_ip));
	if (asprintf(&text, "GET %s HTTP/1.0\r\nHost: %s\r\nAuth-Method: none\r\n"
		     "Auth-User: %s\r\nAuth-Protocol: %s\r\nAuth-Login-Attempt: 1\r\n%s\r\n",
		     config->path, config->authority, user, config->protocol, client_ip) < 0)
		return NULL;
	return text;
}

/* ------------------------------------------------------------------ socket */

static long now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec * 1000L + now.tv_nsec / 1000000L;
}

/* Bound the next send/recv by what is left until deadline; 0 while time is left. */
static int arm(int fd, long deadline)
{
	long left = deadline - now_ms();
	struct timeval limit;

	if (left <= 0)
		return -1;
	limit.tv_sec = left / 1000;
	limit.tv_usec = (left % 1000) * 1000;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit)) != 0)
		return -1;
	return 0;
}

/* A connected blocking socket to the service, or -1. */
static int connect_service(const struct config *config, long deadline)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *found, *ai;
	int fd = -1;

	if (getaddrinfo(config->host, config->port, &hints, &found) != 0)
		return -1;
	for (ai = found; ai != NULL && fd < 0; ai = ai->ai_next) {
		struct pollfd poller = { .events = POLLOUT };
		int error = 0, flags;
		socklen_t size = sizeof(error);
		long left = deadline - now_ms();

		if (left <= 0 || (fd = socket(ai->ai_family, ai->ai_socktype, 0)) < 0)
			continue;
		flags = fcntl(fd, F_GETFL);
		fcntl(fd, F_SETFL, flags | O_NONBLOCK);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
			poller.fd = fd;
			if (errno != EINPROGRESS || poll(&poller, 1, (int) left) != 1 ||
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0 || error != 0) {
				close(fd);
				fd = -1;
				continue;
			}
		}
		fcntl(fd, F_SETFL, flags);
	}
	freeaddrinfo(found);
	return fd;
}

static int send_all(int fd, const char *data, size_t length, long deadline)
{
	while (length > 0) {
		ssize_t sent;

		if (arm(fd, deadline) != 0)
			return -1;
		sent = send(fd, data, length, MSG_NOSIGNAL);
		if (sent < 0 && errno == EINTR)
			continue;
		if (sent <= 0)
			return -1;
		data += sent;
		length -= (size_t) sent;
	}
	return 0;
}

/* Read up to the blank line ending the headers into reply (NUL-terminated);
 * 0 on success, -1 on timeout, close, error or more than MAX_REPLY bytes. */
static int receive_headers(int fd, char *reply, long deadline)
{
	size_t length = 0;

	reply[0] = '\0';
	while (strstr(reply, "\r\n\r\n") == NULL && strstr(reply, "\n\n") == NULL) {
		ssize_t got;

		if (length >= MAX_REPLY || arm(fd, deadline) != 0)
			return -1;
		got = recv(fd, reply + length, MAX_REPLY - length, 0);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return -1;
		if (memchr(reply + length, '\0', (size_t) got) != NULL)
			return -1;
		length += (size_t) got;
		reply[length] = '\0';
	}
	return 0;
}

/* ------------------------------------------------------------------ reply */

struct answer {
	const char *status, *server, *port, *user;  /* pointers into the reply */
};

/* Split the header lines (in place) and pick out the Auth-* ones. */
static void read_headers(char *lines, struct answer *answer)
{
	char *save, *line;

	memset(answer, 0, sizeof(*answer));
	for (line = strtok_r(lines, "\r\n", &save); line != NULL;
	     line = strtok_r(NULL, "\r\n", &save)) {
		char *value = strchr(line, ':'), *end;

		if (value == NULL)
			continue;
		*value++ = '\0';
		value += strspn(value, " \t");
		for (end = value + strlen(value); end > value && (end[-1] == ' ' || end[-1] == '\t');)
			*--end = '\0';
		if (strcasecmp(line, "Auth-Status") == 0)
			answer->status = value;
		else if (strcasecmp(line, "Auth-Server") == 0)
			answer->server = value;
		else if (strcasecmp(line, "Auth-Port") == 0)
			answer->port = value;
		else if (strcasecmp(line, "Auth-User") == 0)
			answer->user = value;
	}
}

/* "[user@]server[:port]" (IPv6 in brackets) from an OK answer into *result. */
static int format_result(const struct answer *answer, char **result)
{
	int ipv6, length;

	if (answer->server == NULL || !only(answer->server, "0123456789abcdefABCDEF.:") ||
	    (answer->port != NULL && (!only(answer->port, "0123456789") || strlen(answer->port) > 5)) ||
	    (answer->user != NULL && !plain(answer->user)))
		return ACCESS_ERROR;   /* the service answered nonsense */
	ipv6 = strchr(answer->server, ':') != NULL;
	length = asprintf(result, "%s%s%s%s%s%s%s",
			  answer->user && *answer->user ? answer->user : "",
			  answer->user && *answer->user ? "@" : "",
			  ipv6 ? "[" : "", answer->server, ipv6 ? "]" : "",
			  answer->port ? ":" : "", answer->port ? answer->port : "");
	return length < 0 ? OTHER_ERROR : FOUND;
}

/* Status of the whole reply; *result set on FOUND. */
static int interpret(char *reply, char **result)
{
	struct answer answer;
	char *first_end = strpbrk(reply, "\r\n"), *blank = strstr(reply, "\r\n\r\n");
	int code;

	if (blank == NULL)
		blank = strstr(reply, "\n\n");
	if (blank != NULL)
		*blank = '\0';   /* the body (if any came with the headers) is not headers */
	if (first_end == NULL || sscanf(reply, "HTTP/%*d.%*d %3d", &code) != 1)
		return ACCESS_ERROR;
	if (code != 200)
		return ACCESS_ERROR;
	read_headers(first_end, &answer);
	if (answer.status == NULL)
		return ACCESS_ERROR;
	if (strcmp(answer.status, "OK") != 0)
		return NOT_FOUND;
	return format_result(&answer, result);
}

/* ------------------------------------------------------------------ lookup */

static int ask(const struct config *config, const char *request, char **result)
{
	long deadline = now_ms() + config->timeout_s * 1000L;
	char *reply = malloc(MAX_REPLY + 1);
	const char *failure = NULL;
	int fd, status = ACCESS_ERROR;

	if (reply == NULL)
		return OTHER_ERROR;
	fd = connect_service(config, deadline);
	if (fd < 0)
		failure = "cannot connect";
	else if (send_all(fd, request, strlen(request), deadline) != 0)
		failure = "cannot send the request";
	else if (receive_headers(fd, reply, deadline) != 0)
		failure = "no complete reply header";
	else if ((status = interpret(reply, result)) == ACCESS_ERROR)
		failure = "unusable reply";
	if (failure != NULL)
		fprintf(stderr, "auth_http: http://%s%s: %s (within %ds, %d bytes)\n",
			config->authority, config->path, failure, config->timeout_s, MAX_REPLY);
	if (fd >= 0)
		close(fd);
	free(reply);
	return status;
}

int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return)
{
	struct config config;
	char *request, *result = NULL;
	int status;

	if (parse_options(&config, options_str) != 0 || key_str == NULL)
		return OTHER_ERROR;
	if (strlen(key_str) > MAX_KEY)
		return NOT_FOUND;   /* no such user name can be routed */
	if ((request = request_text(&config, key_str)) == NULL)
		return OTHER_ERROR;
	status = ask(&config, request, &result);
	free(request);
	if (status == FOUND) {
		*str_return = result;
		*len_return = strlen(result);
	}
	return status;
}
