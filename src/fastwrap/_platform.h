/* The system calls that differ between platforms, behind one interface.
 *
 * Every function returns what the syscall returned (>= 0) or -1 with errno
 * set, and never retries: the caller decides about EINTR, because it must
 * check for Python signals with the GIL held before trying again.
 * All offsets and counts are 64-bit.
 */
#ifndef FASTWRAP_PLATFORM_H
#define FASTWRAP_PLATFORM_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Included after Python.h, so Py_ssize_t (ssize_t's width everywhere)
 * is the return type: Windows has no ssize_t of its own. */
#ifdef _WIN32
#  include <winsock2.h>
#  include <io.h>
#  include <sys/stat.h>
#else
#  include <fcntl.h>
#  include <poll.h>
#  include <sys/stat.h>
#  include <signal.h>
#  include <sys/socket.h>
#  include <sys/types.h>
#  include <unistd.h>
#  include <netinet/in.h>
#  include <netinet/tcp.h>
#  include <sys/mman.h>
#endif

#if defined(__linux__)
#  include <sys/sendfile.h>
#  define FW_HAVE_SENDFILE 1
#  define FW_HAVE_SPLICE 1
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__DragonFly__)
#  include <sys/uio.h>
#  define FW_HAVE_SENDFILE 1
#  define FW_HAVE_SPLICE 0
#else
#  define FW_HAVE_SENDFILE 0
#  define FW_HAVE_SPLICE 0
#endif

#ifndef MSG_NOSIGNAL
#  define MSG_NOSIGNAL 0  /* macOS: SO_NOSIGPIPE or the SIGPIPE mask covers it */
#endif
#ifndef MSG_MORE
#  define MSG_MORE 0
#endif

/* Linux caps one transfer at INT_MAX rounded down to a page. */
#define FW_MAX_CALL ((int64_t)0x7ffff000)
#define FW_PIPE_CHUNK ((int64_t)1 << 20)

static int fw_would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK;
}

/* sendfile(2) from in_fd at *offset; *offset advances by what was sent. */
static Py_ssize_t fw_sendfile(int out_fd, int in_fd, int64_t *offset, int64_t count)
{
    if (count > FW_MAX_CALL)
        count = FW_MAX_CALL;
#if defined(__linux__)
    off_t off = (off_t)*offset;
    Py_ssize_t n = sendfile(out_fd, in_fd, &off, (size_t)count);
    if (n > 0)
        *offset += n;
    return n;
#elif defined(__APPLE__)
    off_t len = (off_t)count;
    int rc = sendfile(in_fd, out_fd, (off_t)*offset, &len, NULL, 0);
    /* EAGAIN and EINTR may come with bytes sent: count them (pysendfile #4). */
    if (rc == -1 && len > 0 && (errno == EAGAIN || errno == EINTR))
        rc = 0;
    if (rc == -1)
        return -1;
    *offset += len;
    return (Py_ssize_t)len;
#elif defined(__FreeBSD__) || defined(__DragonFly__)
    off_t sbytes = 0;
    int rc = sendfile(in_fd, out_fd, (off_t)*offset, (size_t)count, NULL, &sbytes, 0);
    if (rc == -1 && sbytes > 0 && (errno == EAGAIN || errno == EINTR || errno == EBUSY))
        rc = 0;
    if (rc == -1)
        return -1;
    *offset += sbytes;
    return (Py_ssize_t)sbytes;
#else
    (void)out_fd; (void)in_fd; (void)offset;
    errno = ENOSYS;
    return -1;
#endif
}

/* splice(2) between two descriptors, one of which must be a pipe. */
static Py_ssize_t fw_splice(int in_fd, int out_fd, int64_t count, int more)
{
#if FW_HAVE_SPLICE
    if (count > FW_MAX_CALL)
        count = FW_MAX_CALL;
    return splice(in_fd, NULL, out_fd, NULL, (size_t)count,
                  SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
#else
    (void)in_fd; (void)out_fd; (void)count; (void)more;
    errno = ENOSYS;
    return -1;
#endif
}

/* send(2) on sockets (never raising SIGPIPE), write(2) on anything else. */
static Py_ssize_t fw_write(int fd, const char *buf, int64_t count, int is_socket, int more)
{
    if (count > FW_MAX_CALL)
        count = FW_MAX_CALL;
#ifdef _WIN32
    if (is_socket)
        return send((SOCKET)_get_osfhandle(fd), buf, (int)count, 0);
    return _write(fd, buf, (unsigned int)count);
#else
    if (is_socket)
        return send(fd, buf, (size_t)count, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    return write(fd, buf, (size_t)count);
#endif
}

/* Wait for events on fd: 1 ready, 0 timed out, -1 error (errno). */
static int fw_poll(int fd, int events, int timeout_ms)
{
#ifdef _WIN32
    WSAPOLLFD p;
    p.fd = (SOCKET)_get_osfhandle(fd);
    p.events = (SHORT)events;
    p.revents = 0;
    return WSAPoll(&p, 1, timeout_ms);
#else
    struct pollfd p;
    p.fd = fd;
    p.events = (short)events;
    p.revents = 0;
    return poll(&p, 1, timeout_ms);
#endif
}

/* A pipe for splicing from descriptors that are not pipes, as large as allowed. */
static int fw_pipe(int fds[2])
{
#if FW_HAVE_SPLICE
    if (pipe2(fds, O_CLOEXEC) == -1)
        return -1;
    /* Over /proc/sys/fs/pipe-max-size this fails; the default size still works. */
    (void)fcntl(fds[1], F_SETPIPE_SZ, (int)FW_PIPE_CHUNK);
    return 0;
#else
    (void)fds;
    errno = ENOSYS;
    return -1;
#endif
}

static void fw_close_pipe(int fds[2])
{
#ifndef _WIN32
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
#endif
    fds[0] = fds[1] = -1;
}

/* Headers sent with MSG_MORE and no body after them: push them out now
 * instead of after the kernel's 200 ms cork timeout. */
static void fw_push(int fd)
{
#if defined(__linux__) && defined(TCP_CORK)
    int off = 0;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
#else
    (void)fd;
#endif
}

/* sendfile(2) and splice(2) cannot take MSG_NOSIGNAL.  When SIGPIPE is not
 * ignored (embedding hosts), block it in this thread for the duration and
 * swallow the one our own EPIPE raised: the caller reports BrokenPipeError. */
typedef struct {
    int active;
    int was_pending;
#ifndef _WIN32
    sigset_t old;
#endif
} fw_sigpipe_guard;

static void fw_sigpipe_block(fw_sigpipe_guard *g)
{
    g->active = 0;
#ifndef _WIN32
    struct sigaction current;
    sigset_t block, pending;
    if (sigaction(SIGPIPE, NULL, &current) == -1 || current.sa_handler == SIG_IGN)
        return;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &block, &g->old) != 0)
        return;
    g->active = 1;
    g->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
#endif
}

static void fw_sigpipe_restore(fw_sigpipe_guard *g)
{
#ifndef _WIN32
    sigset_t pending, only;
    if (!g->active)
        return;
    if (!g->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        sigemptyset(&only);
        sigaddset(&only, SIGPIPE);
#if defined(__APPLE__)
        /* No sigtimedwait on macOS; SIGPIPE is pending, so sigwait returns at once. */
        int sig;
        (void)sigwait(&only, &sig);
#else
        struct timespec zero = {0, 0};
        while (sigtimedwait(&only, NULL, &zero) == -1 && errno == EINTR)
            ;
#endif
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
    g->active = 0;
#else
    (void)g;
#endif
}

/* The size of fd if it is a regular file: 1 and *size set; 0 if it is not
 * a regular file; -1 with errno set if fstat failed. */
static int fw_regular_size(int fd, int64_t *size)
{
#ifdef _WIN32
    struct _stat64 st;
    if (_fstat64(fd, &st) != 0)
        return -1;
    if ((st.st_mode & _S_IFMT) != _S_IFREG)
        return 0;
#else
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    if (!S_ISREG(st.st_mode))
        return 0;
#endif
    *size = (int64_t)st.st_size;
    return 1;
}

/* lseek with 64-bit offsets everywhere. */
static int64_t fw_lseek(int fd, int64_t offset, int whence)
{
#ifdef _WIN32
    return (int64_t)_lseeki64(fd, offset, whence);
#else
    return (int64_t)lseek(fd, (off_t)offset, whence);
#endif
}

/* Not a poll() event: the source's next bytes are on the disk (_plan.WAIT_DISK). */
#define FW_WAIT_DISK 0x10000
/* The most fw_resident probes at once (_plan.RESIDENT_WINDOW). */
#define FW_RESIDENT_WINDOW ((int64_t)1 << 20)

/* How many bytes of [offset, offset + length) of the file fd are in the page
 * cache, counted from offset up to the first page that is not: 0 means the
 * next read or sendfile(2) would wait for the disk.  A file that cannot be
 * mapped (some filesystems refuse mmap) cannot be probed and counts as
 * resident, so that it is sent as before rather than never.  length must be
 * at most _plan.RESIDENT_WINDOW. */
static int64_t fw_resident(int fd, int64_t offset, int64_t length)
{
#ifdef _WIN32
    (void)fd; (void)offset;
    return length;
#else
    unsigned char vec[FW_RESIDENT_WINDOW / 4096 + 2];
    long page = sysconf(_SC_PAGESIZE);
    int64_t start, resident;
    size_t span, pages, i;
    void *map;
    int rc;
    if (length <= 0 || page <= 0)
        return length;
    start = offset - offset % page;
    span = (size_t)(offset + length - start);
    pages = (span + (size_t)page - 1) / (size_t)page;
    if (pages > sizeof vec)
        return length;
    map = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
    if (map == MAP_FAILED)
        return length;
    /* The vector's element type differs (char on macOS, unsigned char on Linux). */
    rc = mincore(map, span, (void *)vec);
    (void)munmap(map, span);
    if (rc != 0)
        return length;
    for (i = 0; i < pages && (vec[i] & 1); i++)
        ;
    if (i == 0) {
        /* Past the end of a file that shrank nothing is resident, and
         * nothing is to be read either: let the send find the end. */
        struct stat st;
        if (fstat(fd, &st) != 0 || offset >= (int64_t)st.st_size)
            return length;
    }
    resident = (int64_t)i * page - (offset - start);
    if (resident < 0)
        resident = 0;
    return resident < length ? resident : length;
#endif
}

/* One thread at a time drives a transmission.  A claim is an atomic
 * exchange, so two threads that call in at once (which the GIL does not
 * prevent: it is released around every system call, and a free-threaded
 * build has none) never both get in: the second gets a clear error instead
 * of sharing the pipe, the buffers and the offsets. */
#if defined(_MSC_VER)
#  include <intrin.h>
static int fw_claim(long *flag) { return _InterlockedExchange(flag, 1) == 0; }
static void fw_unclaim(long *flag) { (void)_InterlockedExchange(flag, 0); }
#else
static int fw_claim(long *flag) { return __atomic_exchange_n(flag, 1, __ATOMIC_ACQUIRE) == 0; }
static void fw_unclaim(long *flag) { __atomic_store_n(flag, 0, __ATOMIC_RELEASE); }
#endif

#endif /* FASTWRAP_PLATFORM_H */
