/* The copy loop of a relayed flow, in C: recv into a buffer, send it on, repeat.
 *
 * Why C: on a WebSocket or a TLS flight every event moves one small message, and
 * the interpreter's cost around the two syscalls (method lookups, argument parsing,
 * the buffer protocol, a memoryview slice, boxed ints, and the GIL released and
 * taken back around each call) was the last gap to HAProxy: ~1.5 µs of user time per
 * echoed message (bench/README.md, "WebSocket: what the last few per cent are").
 * Here both syscalls cost a plain C call each, and the Python side pays one call per
 * event.
 *
 * The same loop in Python, ``Flow._pump_py`` (splice/io/flow.py), is what an
 * interpreted install runs; both keep the same contract, and ``make test`` runs the
 * suite on each build. This module is built with the mypyc build (setup.py), never on
 * its own.
 *
 * The GIL stays held: the sockets are non-blocking, so each call returns at once,
 * and releasing and re-taking the GIL twice per event was part of what this saves.
 * The one buffer is shared by every flow of the process; the GIL makes that safe.
 *
 * The fast path (``poll``, ``tunnel``, ``untunnel``, ``taken``): once a connection is
 * a tunnel, most events are "this socket is readable, nothing else": read it, write
 * the other socket. ``poll`` waits on the reactor's epoll and runs that loop itself
 * for every socket a flow put on the fast path (``Flow.fast_on``), so such an event
 * costs no Python at all: no tuple in a list, no handler call, no method call. Any
 * other event (a hang-up, writability a flow waits for, a socket nobody tunnelled),
 * and any event whose loop did not end with src drained (end of stream, dst full, a
 * full buffer, an error), is handed to Python as before. Python may move the flow's
 * bytes too: one after the other, in one thread, neither leaving any behind. Where
 * the loop does leave something (the bytes dst refused, an error) the route stops,
 * and that waits in it until the flow collects it (``untunnel``), which the flow does
 * before anything else it does; a flow that leaves state of its own (bytes queued, a
 * pipe, a FIN, a budget) ends its route first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* flow.py's CHUNK: one read that fills it means bulk, the caller switches to splice */
#define CHUNK (64 * 1024)

/* what a call stopped on: the first four are flow.py's DRAINED, BLOCKED, EOF and
 * DONE; FULL means a read filled the buffer (and all of it was sent) */
enum { DRAINED = 0, BLOCKED = 1, END = 2, DONE = 3, FULL = 4, FAILED = -1 };

static char buf[CHUNK];

/* events taken per poll at most (the reactor asks for its BATCH) */
#define MAX_EVENTS 1024

/* A tuple of a, b and c (c NULL: a pair), whose references it takes; NULL when one of
 * them is NULL (an error set by what made it) or the tuple cannot be made. Made by
 * hand: Py_BuildValue parses its format string at every call, which on the per-event
 * path cost more than the tuple itself. */
static PyObject *
pack(PyObject *a, PyObject *b, PyObject *c, int n)
{
    PyObject *t = (a != NULL && b != NULL && (n == 2 || c != NULL)) ? PyTuple_New(n) : NULL;
    if (t == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    if (n == 3)
        PyTuple_SET_ITEM(t, 2, c);
    return t;
}

/* None, or o, as a new reference */
static PyObject *
or_none(PyObject *o)
{
    o = o == NULL ? Py_None : o;
    Py_INCREF(o);
    return o;
}

static PyObject *
result(int status, Py_ssize_t nread, PyObject *tail)
{
    if (tail == NULL)
        tail = or_none(NULL);
    return pack(PyLong_FromLong(status), PyLong_FromSsize_t(nread), tail, 3);
}

/* 0 when a function got its ``want`` arguments, else -1 with a TypeError set */
static int
arity(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd argument%s (%zd given)", name, want,
                 want == 1 ? "" : "s", nargs);
    return -1;
}

static int
as_fd(PyObject *o, int *fd)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

/* The loop: until src has nothing more, dst refuses bytes, src ends, the budget is
 * spent or a read fills the buffer. Adds the bytes read to *total; on BLOCKED the bytes
 * dst refused are buf[*lo:*hi]; on FAILED *err is the errno. EINTR is retried: the
 * sockets are non-blocking, and a signal's handler runs once control is back in Python.
 */
static int
move(int src, int dst, Py_ssize_t budget, int short_ok, Py_ssize_t *total, Py_ssize_t *lo,
     Py_ssize_t *hi, int *err)
{
    ssize_t n, sent;
    size_t want;

    for (;;) {
        want = CHUNK;
        if (budget >= 0) {
            if (budget == 0)
                return DONE;
            if ((size_t)budget < want)
                want = (size_t)budget;
        }
        do
            n = recv(src, buf, want, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return DRAINED;
            *err = errno;
            return FAILED;
        }
        if (n == 0)
            return END;
        *total += n;
        if (budget > 0)
            budget -= n;
        do
            sent = send(dst, buf, (size_t)n, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                *err = errno;
                return FAILED;
            }
            sent = 0;
        }
        if (sent < n) {
            *lo = sent;
            *hi = n;
            return BLOCKED;
        }
        if (n == CHUNK)
            return FULL;
        if (short_ok && (size_t)n < want)
            return DRAINED;
    }
}

PyDoc_STRVAR(copy_doc,
"copy(src_fd, dst_fd, budget, short_ok) -> (status, nread, tail)\n\n"
"Move bytes from socket src_fd to socket dst_fd through one shared 64 KiB buffer\n"
"until src has nothing more (0), dst refuses bytes (1: tail is a bytearray of\n"
"what it refused), src ends (2), the budget is spent (3), or a read filled the\n"
"buffer (4). budget caps the bytes read (-1: no cap); short_ok: a read shorter\n"
"than asked means src is drained. nread counts the bytes read. A socket error\n"
"ends it as status -1 with the errno as tail: nread still counts the bytes read\n"
"before it (the caller raises), as the Python loop counts each read at once.");

static PyObject *
copy(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int src, dst, r, err = 0;
    Py_ssize_t budget, total = 0, lo = 0, hi = 0;

    if (arity("copy", nargs, 4))
        return NULL;
    if (as_fd(args[0], &src) || as_fd(args[1], &dst))
        return NULL;
    budget = PyLong_AsSsize_t(args[2]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    r = PyObject_IsTrue(args[3]);
    if (r < 0)
        return NULL;
    r = move(src, dst, budget, r, &total, &lo, &hi, &err);
    if (r == FAILED) {
        PyObject *e = PyLong_FromLong(err);
        return e == NULL ? NULL : result(FAILED, total, e);
    }
    if (r == BLOCKED) {
        PyObject *tail = PyByteArray_FromStringAndSize(buf + lo, hi - lo);
        return tail == NULL ? NULL : result(BLOCKED, total, tail);
    }
    return result(r, total, NULL);
}

/* -- the fast path ---------------------------------------------------------- */

/* One socket's route: where its bytes go while it is on the fast path, and what the
 * loop left there when it stopped. Indexed by fd; dst == -1: no route. */
typedef struct {
    int dst;
    int on;           /* poll moves its bytes; 0 once its loop left something */
    int err;          /* the errno the loop stopped on, 0 if none */
    Py_ssize_t count; /* bytes read since the flow last collected them */
    PyObject *tail;   /* the bytes dst refused (a bytearray, owned), or NULL */
} route;

static route *routes;
static int nroutes;

static route *
route_of(int fd)
{
    return (fd >= 0 && fd < nroutes && routes[fd].dst >= 0) ? &routes[fd] : NULL;
}

PyDoc_STRVAR(tunnel_doc,
"tunnel(src_fd, dst_fd)\n\n"
"Put src_fd on the fast path: from now on poll() reads it and writes dst_fd\n"
"itself on each plain read event. The caller's flow must be idle (nothing queued\n"
"for dst, no pipe in use) and must collect with untunnel() before it acts on\n"
"what the route may have left.");

static PyObject *
tunnel(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int src, dst;

    if (arity("tunnel", nargs, 2))
        return NULL;
    if (as_fd(args[0], &src) || as_fd(args[1], &dst))
        return NULL;
    if (src >= nroutes) {
        int n = nroutes ? nroutes : 256;
        while (n <= src)
            n *= 2;
        route *grown = PyMem_Realloc(routes, (size_t)n * sizeof(route));
        if (grown == NULL)
            return PyErr_NoMemory();
        for (int i = nroutes; i < n; i++)
            grown[i] = (route){.dst = -1};
        routes = grown;
        nroutes = n;
    }
    route *r = &routes[src];
    Py_CLEAR(r->tail);
    *r = (route){.dst = dst, .on = 1};
    Py_RETURN_NONE;
}

PyDoc_STRVAR(untunnel_doc,
"untunnel(src_fd, force) -> (nread, tail, errno) or None\n\n"
"Take src_fd off the fast path and return what it did there: the bytes read\n"
"since the last collection, the bytes dst refused when the loop stopped (a\n"
"bytearray, or None), and the errno of the error it stopped on (0: none).\n"
"Without force, a route that still runs stays and None is returned. A socket\n"
"with no route returns (0, None, 0).");

static PyObject *
untunnel(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int src, force;

    if (arity("untunnel", nargs, 2))
        return NULL;
    if (as_fd(args[0], &src))
        return NULL;
    force = PyObject_IsTrue(args[1]);
    if (force < 0)
        return NULL;
    route *r = route_of(src);
    if (r == NULL)
        return pack(PyLong_FromLong(0), or_none(NULL), PyLong_FromLong(0), 3);
    if (r->on && !force)
        Py_RETURN_NONE;
    route was = *r;
    *r = (route){.dst = -1};
    /* the route's reference to the tail passes to the tuple */
    return pack(PyLong_FromSsize_t(was.count), was.tail != NULL ? was.tail : or_none(NULL),
                PyLong_FromLong(was.err), 3);
}

PyDoc_STRVAR(taken_doc,
"taken(src_fd) -> int\n\n"
"The bytes poll() read from src_fd since the last collection; they count as\n"
"collected now. The route stays.");

static PyObject *
taken(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int src;

    if (arity("taken", nargs, 1))
        return NULL;
    if (as_fd(args[0], &src))
        return NULL;
    route *r = route_of(src);
    Py_ssize_t n = 0;
    if (r != NULL) {
        n = r->count;
        r->count = 0;
    }
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(poll_doc,
"poll(epoll_fd, maxevents, timeout_ms) -> (nevents, [(fd, events), ...])\n\n"
"epoll_wait, then the copy loop for every plain read event of a socket on the\n"
"fast path. The list holds the events left for Python; nevents counts all of\n"
"them. The GIL is released while waiting, unless timeout_ms is 0.");

static PyObject *
poll(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    struct epoll_event evs[MAX_EVENTS];
    int epfd, maxevents, timeout, n;

    if (arity("poll", nargs, 3))
        return NULL;
    if (as_fd(args[0], &epfd))
        return NULL;
    maxevents = PyLong_AsLong(args[1]);
    timeout = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (maxevents <= 0 || maxevents > MAX_EVENTS)
        maxevents = MAX_EVENTS;
    if (timeout == 0) {
        n = epoll_wait(epfd, evs, maxevents, 0);
    } else {
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(epfd, evs, maxevents, timeout);
        Py_END_ALLOW_THREADS
    }
    if (n < 0) {
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals())
            return NULL;
        n = 0;
    }
    PyObject *left = PyList_New(0);
    if (left == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        uint32_t events = evs[i].events;
        route *r = route_of(fd);
        if (r != NULL && r->on) {
            uint32_t rest = events & ~(uint32_t)EPOLLOUT;
            /* writability matters only to the flow back into this socket, and only
             * while it waits for it; it does not wait while it is on the fast path
             * (a flow that waits never is). A socket that was ever armed, such as an
             * upstream armed for its connect, reports writability on every ACK. */
            if (events & EPOLLOUT) {
                route *back = route_of(r->dst);
                if (back == NULL || !back->on || back->dst != fd)
                    rest = events;
                else if (rest == 0)
                    continue; /* writability nobody waits for */
            }
            if (rest == EPOLLIN) {
                Py_ssize_t lo = 0, hi = 0;
                /* no hang-up came with this edge: a short read proves src drained */
                int s = move(fd, r->dst, -1, 1, &r->count, &lo, &hi, &r->err);
                if (s == DRAINED)
                    continue;
                if (s == BLOCKED || s == FAILED) /* it left something: stop */
                    r->on = 0;
                if (s == BLOCKED) {
                    r->tail = PyByteArray_FromStringAndSize(buf + lo, hi - lo);
                    if (r->tail == NULL) {
                        /* the refused bytes cannot be kept: the flow gets ENOMEM and
                         * the connection is reset; the rest of the batch still runs,
                         * as its events come only once */
                        PyErr_Clear();
                        r->err = ENOMEM;
                    }
                }
            }
        }
        PyObject *item = pack(PyLong_FromLong(fd), PyLong_FromUnsignedLong(events), NULL, 2);
        if (item == NULL)
            goto fail;
        int bad = PyList_Append(left, item);
        Py_DECREF(item);
        if (bad)
            goto fail;
    }
    return pack(PyLong_FromLong(n), left, NULL, 2);
fail:
    Py_DECREF(left);
    return NULL;
}

/* Read and write for the HTTP path: a request head comes in by ``onto`` and goes out
 * by ``put``. Through the socket methods each cost a method lookup, argument parsing
 * and, for a read, a fresh 64 KiB bytes object shrunk to what came and then copied
 * onto the connection's buffer (bench/README.md, "The head scanners in C"). */

PyDoc_STRVAR(onto_doc,
"onto(fd, buf, most) -> int\n\n"
"Read up to ``most`` bytes (at most 64 KiB) from socket fd onto the end of bytearray\n"
"buf: the count read, 0 at the end of the stream, -1 when nothing is there now.\n"
"Errors raise OSError, as socket.recv does.");

static PyObject *
onto(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    ssize_t n;
    if (arity("onto", nargs, 3) < 0 || as_fd(args[0], &fd) < 0)
        return NULL;
    PyObject *dst = args[1];
    if (!PyByteArray_Check(dst)) {
        PyErr_SetString(PyExc_TypeError, "onto() needs a bytearray");
        return NULL;
    }
    Py_ssize_t most = PyLong_AsSsize_t(args[2]);
    if (most == -1 && PyErr_Occurred())
        return NULL;
    if (most < 0 || most > CHUNK)
        most = CHUNK;
    do
        n = recv(fd, buf, (size_t)most, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PyLong_FromLong(-1);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_ssize_t have = PyByteArray_GET_SIZE(dst);
    if (n > 0) {
        if (PyByteArray_Resize(dst, have + n) < 0)
            return NULL; /* a BufferError while exported, or no memory: bytes lost, as
                          * when recv's own allocation fails after the read */
        memcpy(PyByteArray_AS_STRING(dst) + have, buf, (size_t)n);
    }
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(put_doc,
"put(fd, data) -> int\n\n"
"Send bytes-like data on socket fd: the count sent, 0 when the socket takes none now.\n"
"Errors raise OSError, as socket.send does.");

static PyObject *
put(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    ssize_t sent;
    Py_buffer view;
    if (arity("put", nargs, 2) < 0 || as_fd(args[0], &fd) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    do
        sent = send(fd, view.buf, (size_t)view.len, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    int err = errno;
    PyBuffer_Release(&view);
    if (sent < 0) {
        if (err == EAGAIN || err == EWOULDBLOCK)
            return PyLong_FromLong(0);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(sent);
}

/* Accepting, for the listener: a batch of connections in one call, each socket made
 * non-blocking by accept4 itself (the socket methods' accept does not, and the
 * setblocking after it is an ioctl), and without the accept that fails. A failed
 * accept4 costs ~6 us of kernel time here, twelve times a cheap syscall: the kernel
 * allocates the new socket's file before it looks at the queue, and frees it again.
 * The batch ended on one in most wake-ups, and the socket methods' EAGAIN is an
 * exception on top. Instead, after the first connection (the event says one is
 * there), TCP_INFO on the listener says how many more wait: for a listening socket
 * ``tcpi_unacked`` is the accept queue's length (what ``ss -l`` shows as Recv-Q).
 */

/* the dotted quad of the IPv4 address at b (network order) into out (16 bytes); its
 * length. By hand: glibc's inet_ntop formats it with sprintf, ~1,300 instructions */
static Py_ssize_t
ipv4_text(const unsigned char *b, char *out)
{
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100) {
            *p++ = (char)('0' + v / 100);
            v %= 100;
            *p++ = (char)('0' + v / 10);
            v %= 10;
        } else if (v >= 10) {
            *p++ = (char)('0' + v / 10);
            v %= 10;
        }
        *p++ = (char)('0' + v);
        if (i < 3)
            *p++ = '.';
    }
    return p - out;
}

/* (fd, (host, port)) of an accepted connection, the host as the socket methods give it;
 * "" and 0 for a family other than IPv4 and IPv6 */
static PyObject *
accepted(int fd, const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN] = "";
    Py_ssize_t len = 0;
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        len = ipv4_text((const unsigned char *)&a->sin_addr, host);
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) != NULL)
            len = (Py_ssize_t)strlen(host);
        port = ntohs(a->sin6_port);
    }
    return pack(PyLong_FromLong(fd),
                pack(PyUnicode_FromStringAndSize(host, len), PyLong_FromLong(port), NULL, 2),
                NULL, 2);
}

/* how many connections wait in listener fd's accept queue; -1 when it cannot tell */
static long
queued(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
        len < offsetof(struct tcp_info, tcpi_unacked) + sizeof(ti.tcpi_unacked) ||
        ti.tcpi_state != TCP_LISTEN)
        return -1;
    return (long)ti.tcpi_unacked;
}

PyDoc_STRVAR(accept_doc,
"accept(listen_fd, most) -> ([(fd, (host, port)), ...], errno)\n\n"
"Accept up to ``most`` connections, each socket non-blocking and close-on-exec.\n"
"After the first, the listener's accept queue length bounds the batch, so no\n"
"accept fails for want of a connection. errno is 0 when the batch ended normally\n"
"(the queue drained, or ``most`` reached), else the error the last accept failed\n"
"with, the connections before it still returned.");

static PyObject *
accept_(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int lfd, fd, err = 0;

    if (arity("accept", nargs, 2) || as_fd(args[0], &lfd))
        return NULL;
    long most = PyLong_AsLong(args[1]);
    if (most == -1 && PyErr_Occurred())
        return NULL;
    PyObject *got = PyList_New(0);
    if (got == NULL)
        return NULL;
    for (int asked = 0; most > 0; most--) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        do
            fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        while (fd < 0 && errno == EINTR);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                err = errno;
            break;
        }
        PyObject *item = accepted(fd, &ss);
        if (item == NULL || PyList_Append(got, item) < 0) {
            Py_XDECREF(item);
            close(fd);
            goto fail;
        }
        Py_DECREF(item);
        if (!asked && most > 1) {
            long more = queued(lfd);
            asked = 1;
            if (more >= 0 && more < most - 1)
                most = more + 1;
        }
    }
    /* not pack(): if the tuple cannot be made, the fds in the list must be closed */
    PyObject *e = PyLong_FromLong(err);
    PyObject *out = e == NULL ? NULL : PyTuple_New(2);
    if (out == NULL) {
        Py_XDECREF(e);
        goto fail;
    }
    PyTuple_SET_ITEM(out, 0, got);
    PyTuple_SET_ITEM(out, 1, e);
    return out;
fail:
    /* the connections accepted so far would leak with the list: close them */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(got); i++)
        close((int)PyLong_AsLong(PyTuple_GET_ITEM(PyList_GET_ITEM(got, i), 0)));
    Py_DECREF(got);
    return NULL;
}

static PyMethodDef methods[] = {
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL, copy_doc},
    {"poll", (PyCFunction)(void (*)(void))poll, METH_FASTCALL, poll_doc},
    {"tunnel", (PyCFunction)(void (*)(void))tunnel, METH_FASTCALL, tunnel_doc},
    {"untunnel", (PyCFunction)(void (*)(void))untunnel, METH_FASTCALL, untunnel_doc},
    {"taken", (PyCFunction)(void (*)(void))taken, METH_FASTCALL, taken_doc},
    {"onto", (PyCFunction)(void (*)(void))onto, METH_FASTCALL, onto_doc},
    {"put", (PyCFunction)(void (*)(void))put, METH_FASTCALL, put_doc},
    {"accept", (PyCFunction)(void (*)(void))accept_, METH_FASTCALL, accept_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splice.io._copy",
    .m_doc = "The copy loop of a relayed flow, the fast path of tunnel events, the read and\n"
              "write of the HTTP path, and the listener's accept, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__copy(void)
{
    return PyModule_Create(&module);
}
