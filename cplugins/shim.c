/*
 * shim.c — the host side of perdition's map ABI, for perditionpy.
 *
 * perdition 2.2 is the executable its map libraries are loaded into, so they
 * may use symbols it exports.  perditionpy is a Python process; this small
 * library, loaded with RTLD_GLOBAL before any map library, provides them:
 *
 *   peername, sockname     the addresses of the connection being looked up
 *   system_uname           uname(2), filled when the shim is loaded
 *   user_server_port_*     the parser perdition's LDAP library calls
 *
 * and a bridge from libvanessa_logger (which perdition's libraries log
 * through) to a callback perditionpy registers.  The perditionpy_shim_*
 * functions are for perditionpy only; see perditiondb.h for the ABI.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include "perditiondb.h"

struct sockaddr_storage *peername;
struct sockaddr_storage *sockname;
struct utsname *system_uname;

static struct sockaddr_storage peer_storage;
static struct sockaddr_storage sock_storage;
static struct utsname uname_storage;
static char domain_delimiter[64] = "@";

typedef void (*log_sink_t)(int priority, const char *line);
static log_sink_t log_sink;

__attribute__((constructor)) static void shim_load(void)
{
	if (uname(&uname_storage) == 0)
		system_uname = &uname_storage;
}

static struct sockaddr_storage *
store_name(struct sockaddr_storage *slot, const void *name, size_t len)
{
	if (name == NULL || len == 0 || len > sizeof(*slot))
		return NULL;
	memset(slot, 0, sizeof(*slot));
	memcpy(slot, name, len);
	return slot;
}

/* Point peername/sockname at copies of these sockaddrs (NULL/0: unknown). */
void perditionpy_shim_set_names(const void *peer, size_t peer_len,
                                const void *sock, size_t sock_len)
{
	peername = store_name(&peer_storage, peer, peer_len);
	sockname = store_name(&sock_storage, sock, sock_len);
}

/* The --domain_delimiter user_server_port_*assign() split at. */
void perditionpy_shim_set_domain_delimiter(const char *delimiter)
{
	snprintf(domain_delimiter, sizeof(domain_delimiter), "%s",
	         delimiter ? delimiter : "");
}

/* ------------------------------------------------------------- logging */

void perditionpy_shim_set_log_sink(log_sink_t sink)
{
	log_sink = sink;
}

static void shim_log_va(int priority, const char *fmt, va_list ap)
{
	char line[4096];

	if (log_sink == NULL)
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	log_sink(priority, line);
}

/*
 * Make libvanessa_logger's global logger (the one perdition's libraries use)
 * write through shim_log_va.  1 when the library is not installed, -1 when
 * it could not be set up, 0 on success.
 */
int perditionpy_shim_hook_vanessa_logger(void)
{
	typedef void *(*openlog_function_t)(void (*)(int, const char *, va_list),
	                                    const char *, int, int);
	void *handle, **global;
	openlog_function_t openlog_function;
	void *logger;

	handle = dlopen("libvanessa_logger.so.0", RTLD_NOW | RTLD_GLOBAL);
	if (handle == NULL)
		return 1;
	openlog_function = (openlog_function_t) dlsym(handle,
			"vanessa_logger_openlog_function");
	global = (void **) dlsym(handle, "__vanessa_logger_vl");
	if (openlog_function == NULL || global == NULL)
		return -1;
	if (*global != NULL)
		return 0;
	logger = openlog_function(shim_log_va, "perditionpy", 7 /* LOG_DEBUG */, 0);
	if (logger == NULL)
		return -1;
	*global = logger;
	return 0;
}

/* ------------------------------------------------------ user_server_port */

user_server_port_t *user_server_port_create(void)
{
	return calloc(1, sizeof(user_server_port_t));
}

int user_server_port_assign(user_server_port_t **usp, char *user,
                            char *server, char *port)
{
	if (*usp == NULL && (*usp = user_server_port_create()) == NULL)
		return -1;
	(*usp)->user = user;
	(*usp)->server = server;
	(*usp)->port = port;
	return 0;
}

/* Last occurrence of needle in haystack, or NULL. */
static const char *last_of(const char *haystack, size_t len, const char *needle)
{
	size_t width = strlen(needle);
	size_t i;

	if (width == 0 || width > len)
		return NULL;
	for (i = len - width + 1; i-- > 0;)
		if (memcmp(haystack + i, needle, width) == 0)
			return haystack + i;
	return NULL;
}

static char *copy_of(const char *start, size_t len)
{
	char *copy = malloc(len + 1);

	if (copy != NULL) {
		memcpy(copy, start, len);
		copy[len] = '\0';
	}
	return copy;
}

/*
 * [user<delim>]server[:port]: the port follows the last ':' unless the
 * text holds an IPv6 literal "[...]" (then only a ':' right after ']'),
 * the user is what precedes the last delimiter, and an IPv6 server loses
 * its brackets.
 */
int user_server_port_strn_assign(user_server_port_t **usp, const char *str,
                                 size_t str_len)
{
	size_t len = strnlen(str, str_len);
	const char *end = str + len, *right, *left, *cut, *start = str;
	char *user = NULL, *server = NULL, *port = NULL;
	int literal = 0, failed = 0;

	right = memrchr(str, ']', len);
	left = memchr(str, '[', len);
	if (right != NULL && left != NULL && right - left > 2) {
		literal = 1;
		if (right + 1 < end && right[1] == ':') {
			failed |= (port = copy_of(right + 2, end - right - 2)) == NULL;
			end = right + 1;
		}
	} else {
		const char *colon = memrchr(str, ':', len);
		if (colon != NULL) {
			failed |= (port = copy_of(colon + 1, end - colon - 1)) == NULL;
			end = colon;
		}
	}
	cut = last_of(str, end - str, domain_delimiter);
	if (cut != NULL) {
		failed |= (user = copy_of(str, cut - str)) == NULL;
		start = cut + strlen(domain_delimiter);
	}
	if (literal && *start == '[') {
		const char *close = memchr(start, ']', end - start);
		if (close != NULL)
			end = close;
		start++;
	}
	failed |= (server = copy_of(start, end - start)) == NULL;
	if (!failed && *usp == NULL)
		failed = (*usp = user_server_port_create()) == NULL;
	if (failed) {
		free(user);
		free(server);
		free(port);
		return -1;
	}
	/* As perdition: a reused struct forgets (does not free) what it held. */
	(*usp)->user = user;
	(*usp)->server = server;
	(*usp)->port = port;
	return 0;
}

int user_server_port_str_assign(user_server_port_t **usp, const char *str)
{
	return user_server_port_strn_assign(usp, str, strlen(str));
}

void user_server_port_unassign(user_server_port_t *usp)
{
	if (usp != NULL)
		memset(usp, 0, sizeof(*usp));
}

void user_server_port_destroy(user_server_port_t *usp)
{
	if (usp == NULL)
		return;
	free(usp->user);
	free(usp->server);
	free(usp->port);
	free(usp);
}

void user_server_port_destroy_cb(void *p)
{
	user_server_port_destroy((user_server_port_t *) p);
}

char *user_server_port_get_port(const user_server_port_t *usp)
{
	return usp->port;
}

char *user_server_port_get_server(const user_server_port_t *usp)
{
	return usp->server;
}

char *user_server_port_get_user(const user_server_port_t *usp)
{
	return usp->user;
}
