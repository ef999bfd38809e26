/* The floor under primary-accept (issue 19 part B): the least a primary can do per connection.
 *
 *   bare_handoff <port> <workers> handoff    the primary accepts (until EAGAIN, up to 64 per
 *                                            wake-up), deals the sockets round-robin to its
 *                                            workers, one sendmsg(SCM_RIGHTS) per worker per
 *                                            batch, and closes its copies at once (no
 *                                            acknowledgement: less than herd does)
 *   bare_handoff <port> <workers> reuseport  each worker accepts on its own SO_REUSEPORT
 *                                            listener; the primary only waits
 *
 * Workers answer every connection with a fixed `200 ok` and close it, so per-connection kernel
 * work is what is measured. Used by bench/bare.sh; binds 127.0.0.1 only. The primary's pid is
 * its own; workers are its children and die with it (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BATCH 64

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

static void die(const char *what) { perror(what); exit(1); }

static int listener(int port, int reuseport) {
    int fd = socket(AF_INET, SOCK_STREAM | (reuseport ? 0 : SOCK_NONBLOCK), 0), one = 1;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static void serve(int conn) {
    char buf[4096];
    if (read(conn, buf, sizeof buf) > 0) (void)!write(conn, RESPONSE, sizeof RESPONSE - 1);
    close(conn);
}

static void handoff_worker(int ipc) {
    for (;;) {
        char data[1];
        char control[CMSG_SPACE(sizeof(int) * BATCH)];
        struct iovec iov = {data, sizeof data};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
        if (recvmsg(ipc, &msg, 0) <= 0) exit(0);
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < n; i++) serve(fds[i]);
        }
    }
}

static void send_fds(int ipc, const int *fds, int n) {
    char data[1] = {0};
    char control[CMSG_SPACE(sizeof(int) * BATCH)];
    struct iovec iov = {data, sizeof data};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    if (sendmsg(ipc, &msg, 0) < 0) die("sendmsg");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <port> <workers> handoff|reuseport\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), workers = atoi(argv[2]), reuseport = strcmp(argv[3], "reuseport") == 0;
    if (workers < 1 || workers > 64) die("workers");
    int ipc[64];
    int lfd = reuseport ? -1 : listener(port, 0);
    for (int w = 0; w < workers; w++) {
        int pair[2];
        if (!reuseport && socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) < 0) die("socketpair");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (reuseport) {
                int l = listener(port, 1);
                for (;;) {
                    int conn = accept(l, NULL, NULL);
                    if (conn >= 0) serve(conn);
                }
            }
            close(pair[0]);
            close(lfd);
            handoff_worker(pair[1]);
        }
        if (!reuseport) {
            close(pair[1]);
            ipc[w] = pair[0];
        }
    }
    printf("ready\n");
    fflush(stdout);
    if (reuseport) {
        for (;;) pause();
    }
    int next = 0;
    for (;;) {
        struct pollfd p = {lfd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) die("poll");
        int batch[64][BATCH], count[64] = {0}, total = 0;
        while (total < BATCH) {
            int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (conn < 0) break;
            batch[next][count[next]++] = conn;
            next = (next + 1) % workers;
            total++;
        }
        for (int w = 0; w < workers; w++) {
            if (!count[w]) continue;
            send_fds(ipc[w], batch[w], count[w]);
            for (int i = 0; i < count[w]; i++) close(batch[w][i]);
        }
    }
}
