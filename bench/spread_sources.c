/* LD_PRELOAD shim for benchmarks: every TCP connection to 127.0.0.0/8 leaves from a source
 * address drawn from 127.0.0.2-251 instead of 127.0.0.1, so that wrk looks like 250 clients.
 * Without it, ip-hash on loopback sees one client and puts every connection on one worker.
 * Built and used by bench/churn.sh (SPREAD_SOURCES=1); never part of herd. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    static atomic_uint next;
    if (!real_connect) real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *to = (const struct sockaddr_in *)addr;
        if ((ntohl(to->sin_addr.s_addr) >> 24) == 127) {
            unsigned n = atomic_fetch_add(&next, 2654435761u);
            struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = 0};
            from.sin_addr.s_addr = htonl(0x7f000000u | (2 + (n >> 16) % 250));
            (void)bind(fd, (const struct sockaddr *)&from, sizeof from); /* on failure: 127.0.0.1 */
        }
    }
    return real_connect(fd, addr, len);
}
