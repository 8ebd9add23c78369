/*
 * splice_client: a keep-alive HTTP/1.1 load client that is never the bottleneck.
 *
 *   splice_client -p PORT -u /path [-h 127.0.0.1] [-c CONNS] [-n REQUESTS | -d SECONDS]
 *                 [-H 'Name: value'] [-r SIZE:COUNT]
 *
 * Each of CONNS threads holds one connection and sends GET requests one after
 * another (no pipelining), either REQUESTS times or until SECONDS have passed.
 * -H adds one header line to every request (a Range of several parts, say);
 * -r has each connection ask for COUNT ranges of SIZE bytes in turn
 * (bytes=0-SIZE-1, then SIZE-2*SIZE-1, ...), as a download accelerator
 * fetches a file.  The status line must say 200 (206 with -H or -r) and the
 * response must carry a Content-Length;
 * the body is moved socket -> pipe -> /dev/null with splice(2), so its bytes
 * never enter user space (4-7 GB/s on loopback).  A response whose body ends
 * before its Content-Length, or any failed system call, is an error: the
 * client prints it on stderr and exits 1, so a broken server cannot look fast.
 * A server that closes the connection after a response (Connection: close,
 * HTTP/1.0) is reconnected to, as a browser would.
 *
 * On success one JSON line goes to stdout:
 *   {"responses": N, "body_bytes": B, "seconds": S, "connects": K}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 65536
#define PIPE_SIZE (1 << 20)

struct config {
    struct sockaddr_in addr;
    char request[2048];
    size_t request_len;
    long requests;          /* per connection; 0 = run for `seconds` */
    unsigned long long range_size;  /* -r: each request asks for the next range */
    long range_count;
    const char *status;     /* the status code every response must carry */
    double deadline;        /* monotonic time to stop at, when requests == 0 */
};

struct worker {
    const struct config *cfg;
    pthread_t thread;
    long responses;
    unsigned long long body_bytes;
    long connects;
    long next_range;
    int failed;
};

static double now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("splice_client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return -1;
}

static int open_connection(const struct config *cfg)
{
    int one = 1;
    struct timeval timeout = {30, 0};  /* a hung server fails the run, not hangs it */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail("socket: %s", strerror(errno));
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0
        || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0
        || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0) {
        fail("setsockopt: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)&cfg->addr, sizeof cfg->addr) != 0) {
        fail("connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail("send: %s", strerror(errno));
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Case-insensitive search for header `name` in the header block; its value or NULL. */
static const char *header_value(const char *head, const char *name)
{
    size_t len = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line != NULL && line[2] != '\r') {
        line += 2;
        if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
            const char *v = line + len + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            return v;
        }
        line = strstr(line, "\r\n");
    }
    return NULL;
}

/*
 * Read the status line and headers into buf; *got is how many bytes were
 * read, which may include the start of the body.  Returns the header length,
 * 0 when the server closed the connection before a response began, -1 on
 * error.
 */
static long read_head(int fd, char *buf, size_t *got)
{
    *got = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + *got, HEAD_MAX - 1 - *got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail("recv (headers): %s", strerror(errno));
        }
        if (n == 0) {
            if (*got == 0)
                return 0;
            return fail("connection closed inside the headers");
        }
        *got += (size_t)n;
        buf[*got] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end != NULL)
            return (long)(end - buf) + 4;
        if (*got >= HEAD_MAX - 1)
            return fail("headers longer than %d bytes", HEAD_MAX);
    }
}

/* Move `count` body bytes from the socket to /dev/null through the pipe. */
static int splice_body(int fd, const int pipefd[2], int devnull, unsigned long long count)
{
    while (count > 0) {
        size_t want = count < PIPE_SIZE ? (size_t)count : PIPE_SIZE;
        ssize_t in = splice(fd, NULL, pipefd[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (in < 0) {
            if (errno == EINTR)
                continue;
            return fail("splice (socket to pipe): %s", strerror(errno));
        }
        if (in == 0)
            return fail("connection closed with %llu body bytes missing", count);
        count -= (unsigned long long)in;
        while (in > 0) {
            ssize_t out = splice(pipefd[0], NULL, devnull, NULL, (size_t)in, SPLICE_F_MOVE);
            if (out < 0) {
                if (errno == EINTR)
                    continue;
                return fail("splice (pipe to /dev/null): %s", strerror(errno));
            }
            if (out == 0)
                return fail("splice (pipe to /dev/null) moved nothing");
            in -= out;
        }
    }
    return 0;
}

/*
 * One request/response on `*fd`, reconnecting first if needed.  Returns 1
 * when a response was received in full, 0 when the server had closed an
 * idle kept-alive connection (retry), -1 on error.
 */
static int exchange(struct worker *w, int *fd, char *buf, const int pipefd[2], int devnull)
{
    const struct config *cfg = w->cfg;
    int reused = *fd >= 0;
    if (!reused) {
        *fd = open_connection(cfg);
        if (*fd < 0)
            return -1;
        w->connects++;
    }
    if (cfg->range_size > 0) {
        char request[2048 + 64];
        unsigned long long start = (unsigned long long)(w->next_range++ % cfg->range_count)
                                   * cfg->range_size;
        int len = snprintf(request, sizeof request, "%sRange: bytes=%llu-%llu\r\n\r\n",
                           cfg->request, start, start + cfg->range_size - 1);
        if (len < 0 || (size_t)len >= sizeof request)
            return fail("request too long");
        if (send_all(*fd, request, (size_t)len) != 0)
            return -1;
    } else if (send_all(*fd, cfg->request, cfg->request_len) != 0) {
        return -1;
    }
    size_t got;
    long head_len = read_head(*fd, buf, &got);
    if (head_len < 0)
        return -1;
    if (head_len == 0) {
        if (close(*fd) != 0)
            return fail("close: %s", strerror(errno));
        *fd = -1;
        return reused ? 0 : fail("server closed a new connection without answering");
    }
    if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, cfg->status, 5) != 0) {
        char *eol = strstr(buf, "\r\n");
        if (eol != NULL)
            *eol = '\0';
        return fail("unexpected status line: %.200s", buf);
    }
    const char *cl = header_value(buf, "Content-Length");
    if (cl == NULL)
        return fail("response without Content-Length");
    char *endp;
    errno = 0;
    unsigned long long length = strtoull(cl, &endp, 10);
    if (errno != 0 || endp == cl)
        return fail("bad Content-Length");
    unsigned long long extra = got - (size_t)head_len;
    if (extra > length)
        return fail("%llu bytes past the Content-Length (%llu)", extra, length);
    if (splice_body(*fd, pipefd, devnull, length - extra) != 0)
        return -1;
    w->responses++;
    w->body_bytes += length;
    const char *conn = header_value(buf, "Connection");
    int closes = (conn != NULL && strncasecmp(conn, "close", 5) == 0)
                 || strncmp(buf, "HTTP/1.0", 8) == 0;
    if (closes) {
        if (close(*fd) != 0)
            return fail("close: %s", strerror(errno));
        *fd = -1;
    }
    return 1;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    const struct config *cfg = w->cfg;
    int pipefd[2], fd = -1, devnull;
    char *buf = malloc(HEAD_MAX);
    if (buf == NULL) {
        fail("malloc failed");
        w->failed = 1;
        return NULL;
    }
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        fail("pipe2: %s", strerror(errno));
        w->failed = 1;
        free(buf);
        return NULL;
    }
    /* A bigger pipe means fewer splices; the default 64 KiB still works. */
    if (fcntl(pipefd[1], F_SETPIPE_SZ, PIPE_SIZE) < 0 && errno != EPERM)
        fail("F_SETPIPE_SZ: %s (continuing with the default)", strerror(errno));
    devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull < 0) {
        fail("open /dev/null: %s", strerror(errno));
        w->failed = 1;
    }
    int idle_retries = 0;
    while (!w->failed) {
        if (cfg->requests ? w->responses >= cfg->requests : now() >= cfg->deadline)
            break;
        int r = exchange(w, &fd, buf, pipefd, devnull);
        if (r < 0)
            w->failed = 1;
        else if (r == 0 && ++idle_retries > 1000)
            w->failed = fail("server keeps closing kept-alive connections") != 0;
    }
    if (fd >= 0 && close(fd) != 0)
        w->failed = fail("close: %s", strerror(errno)) != 0;
    if (devnull >= 0 && close(devnull) != 0)
        w->failed = 1;
    if (close(pipefd[0]) != 0 || close(pipefd[1]) != 0)
        w->failed = 1;
    free(buf);
    return NULL;
}

static void usage(void)
{
    fputs("usage: splice_client -p PORT -u PATH [-h HOST] [-c CONNS] [-n REQUESTS | -d SECONDS]"
          " [-H HEADER] [-r SIZE:COUNT]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    struct config cfg;
    const char *host = "127.0.0.1", *path = NULL, *header = NULL;
    char *colon;
    long port = 0, conns = 1;
    double seconds = 0;
    int opt;
    memset(&cfg, 0, sizeof cfg);
    cfg.status = " 200 ";
    while ((opt = getopt(argc, argv, "h:p:u:c:n:d:H:r:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = strtol(optarg, NULL, 10); break;
        case 'u': path = optarg; break;
        case 'c': conns = strtol(optarg, NULL, 10); break;
        case 'n': cfg.requests = strtol(optarg, NULL, 10); break;
        case 'd': seconds = strtod(optarg, NULL); break;
        case 'H': header = optarg; cfg.status = " 206 "; break;
        case 'r':
            cfg.range_size = strtoull(optarg, &colon, 10);
            cfg.range_count = *colon == ':' ? strtol(colon + 1, NULL, 10) : 0;
            if (cfg.range_size == 0 || cfg.range_count < 1)
                usage();
            cfg.status = " 206 ";
            break;
        default: usage();
        }
    }
    if (path == NULL || port <= 0 || port > 65535 || conns < 1 || conns > 1024
        || (cfg.requests <= 0) == (seconds <= 0))
        usage();
    cfg.addr.sin_family = AF_INET;
    cfg.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &cfg.addr.sin_addr) != 1) {
        fail("not an IPv4 address: %s", host);
        return 2;
    }
    /* With -r the blank line ending the head is added per request, after its Range. */
    int len = snprintf(cfg.request, sizeof cfg.request,
                       "GET %s HTTP/1.1\r\nHost: %s:%ld\r\nUser-Agent: splice_client\r\n"
                       "%s%s%s", path, host, port, header ? header : "", header ? "\r\n" : "",
                       cfg.range_size > 0 ? "" : "\r\n");
    if (len < 0 || (size_t)len >= sizeof cfg.request) {
        fail("path too long");
        return 2;
    }
    cfg.request_len = (size_t)len;

    struct worker *workers = calloc((size_t)conns, sizeof *workers);
    if (workers == NULL) {
        fail("calloc failed");
        return 1;
    }
    double start = now();
    cfg.deadline = start + seconds;
    long started = 0;
    for (; started < conns; started++) {
        workers[started].cfg = &cfg;
        int err = pthread_create(&workers[started].thread, NULL, run_worker, &workers[started]);
        if (err != 0) {
            fail("pthread_create: %s", strerror(err));
            break;
        }
    }
    long responses = 0, connects = 0;
    unsigned long long bytes = 0;
    int failed = started < conns;
    for (long i = 0; i < started; i++) {
        int err = pthread_join(workers[i].thread, NULL);
        if (err != 0) {
            fail("pthread_join: %s", strerror(err));
            failed = 1;
        }
        responses += workers[i].responses;
        bytes += workers[i].body_bytes;
        connects += workers[i].connects;
        failed |= workers[i].failed;
    }
    double elapsed = now() - start;
    free(workers);
    if (failed)
        return 1;
    if (printf("{\"responses\": %ld, \"body_bytes\": %llu, \"seconds\": %.6f, \"connects\": %ld}\n",
               responses, bytes, elapsed, connects) < 0 || fflush(stdout) != 0)
        return 1;
    return 0;
}
