/*
 * perditiondb.h — the ABI between perdition 2.2 (and perditionpy) and a map
 * library loaded with -M /path/to/map.so -m "options".
 *
 * A map library is a shared object (gcc -shared -fPIC map.c -o map.so).
 * The host looks these symbols up by name; only one of dbserver_get and
 * dbserver_get2 is needed (dbserver_get2 is used only when dbserver_get is
 * absent).  All strings are NUL-terminated C strings.
 *
 * Return codes of every entry point:
 *     0  success
 *    -1  access error (file, connection, server...)
 *    -2  key not found
 *    -3  any other error
 *
 * Life cycle:
 *   - dbserver_init(options) runs once when the map is opened, before the
 *     first lookup.  A non-zero return stops the proxy from starting.
 *   - dbserver_get / dbserver_get2 run once per lookup key.  The host passes
 *     the -m string again (NULL when -m was not given).
 *   - dbserver_fini() runs when the map is closed: at shutdown, and on SIGHUP
 *     immediately followed by dbserver_init() with the (same) options.
 *
 * Threads: the host never calls into one library from two threads at once,
 * and the globals below are only valid during a call.
 */
#ifndef PERDITIONDB_H
#define PERDITIONDB_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/utsname.h>

/* ------------------------------------------------------------ entry points */

/* Optional: set up (open files, connect).  options may be NULL. */
int dbserver_init(char *options_str);

/* Optional: tear down. */
int dbserver_fini(void);

/*
 * Look key_str up.  On success store a malloc()ed string of the form
 *     [<user><domain_delimiter>]<server>[:<port>]
 * (an IPv6 server written [2001:db8::1]:143) in *str_return and its length
 * (without the NUL) in *len_return; the host frees it with free(3).
 * An empty string (or NULL) with status 0 means "no server" and ends the
 * search over --query_key formats.
 *
 * ABI wart: perdition declares len_return as size_t *, but many libraries
 * (Debian's included) store an int through it.  The host zeroes a size_t
 * before the call, so both work on little-endian machines.
 */
int dbserver_get(const char *key_str, const char *options_str,
                 char **str_return, size_t *len_return);

/*
 * The alternative: return each part separately (malloc()ed, or left NULL).
 * A result with only a user keeps the default server (--outgoing_server).
 */
int dbserver_get2(const char *key_str, const char *options_str,
                  char **user_str, char **server_str, char **port_str);

/* ------------------------------------------------------ what the host exports */

/*
 * The client's address (peername) and the address it connected to
 * (sockname) of the connection being looked up, or NULL when unknown.
 * perdition's headers say struct sockaddr_storage *; IPv4-only libraries
 * cast them to struct sockaddr_in *.  Read them during a call only.
 */
extern struct sockaddr_storage *peername;
extern struct sockaddr_storage *sockname;

/* uname(2) of the host, filled once at start-up. */
extern struct utsname *system_uname;

/*
 * perdition's [user@]server[:port] parser, which its LDAP library calls.
 * The delimiter is the host's --domain_delimiter.  Strings in the struct
 * are malloc()ed; user_server_port_destroy() frees them and the struct,
 * user_server_port_unassign() forgets them without freeing (after the
 * caller took them with the getters).
 */
typedef struct {
	char *user;
	char *server;
	char *port;
} user_server_port_t;

user_server_port_t *user_server_port_create(void);
int user_server_port_assign(user_server_port_t **usp, char *user,
                            char *server, char *port);
int user_server_port_str_assign(user_server_port_t **usp, const char *str);
int user_server_port_strn_assign(user_server_port_t **usp, const char *str,
                                 size_t str_len);
void user_server_port_unassign(user_server_port_t *usp);
void user_server_port_destroy(user_server_port_t *usp);
void user_server_port_destroy_cb(void *p);
char *user_server_port_get_port(const user_server_port_t *usp);
char *user_server_port_get_server(const user_server_port_t *usp);
char *user_server_port_get_user(const user_server_port_t *usp);

/*
 * Logging: perdition's libraries log through libvanessa_logger's global
 * logger, which the host points at its own log.  New libraries may simply
 * call vanessa_logger_log(__vanessa_logger_vl, LOG_INFO, "...") or write to
 * stderr; perditionpy forwards vanessa_logger output to its log.
 */

#endif /* PERDITIONDB_H */
