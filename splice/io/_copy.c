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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

/* flow.py's CHUNK: one read that fills it means bulk, the caller switches to splice */
#define CHUNK (64 * 1024)

/* what a call stopped on: the first four are flow.py's DRAINED, BLOCKED, EOF and
 * DONE; FULL means a read filled the buffer (and all of it was sent) */
enum { DRAINED = 0, BLOCKED = 1, END = 2, DONE = 3, FULL = 4 };

static char buf[CHUNK];

static PyObject *
result(int status, Py_ssize_t nread, PyObject *tail)
{
    PyObject *t = PyTuple_New(3);
    PyObject *s = PyLong_FromLong(status);
    PyObject *n = PyLong_FromSsize_t(nread);
    if (t == NULL || s == NULL || n == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(s);
        Py_XDECREF(n);
        Py_XDECREF(tail);
        return NULL;
    }
    if (tail == NULL) {
        tail = Py_None;
        Py_INCREF(tail);
    }
    PyTuple_SET_ITEM(t, 0, s);
    PyTuple_SET_ITEM(t, 1, n);
    PyTuple_SET_ITEM(t, 2, tail);
    return t;
}

static int
as_fd(PyObject *o, int *fd)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "copy(): not a file descriptor");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

/* a syscall failed with errno set: -1 to retry (EINTR), 0 for EAGAIN, else raise */
static int
failed(void)
{
    if (errno == EINTR)
        return PyErr_CheckSignals() ? 1 : -1;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return 1;
}

PyDoc_STRVAR(copy_doc,
"copy(src_fd, dst_fd, budget, short_ok) -> (status, nread, tail)\n\n"
"Move bytes from socket src_fd to socket dst_fd through one shared 64 KiB buffer\n"
"until src has nothing more (0), dst refuses bytes (1: tail is a bytearray of\n"
"what it refused), src ends (2), the budget is spent (3), or a read filled the\n"
"buffer (4). budget caps the bytes read (-1: no cap); short_ok: a read shorter\n"
"than asked means src is drained. nread counts the bytes read. Errors raise\n"
"OSError, as the socket methods do.");

static PyObject *
copy(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int src, dst, r;
    Py_ssize_t budget, total = 0;
    ssize_t n, sent;
    size_t want;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "copy() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_fd(args[0], &src) || as_fd(args[1], &dst))
        return NULL;
    budget = PyLong_AsSsize_t(args[2]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    r = PyObject_IsTrue(args[3]);
    if (r < 0)
        return NULL;
    const int short_ok = r;

    for (;;) {
        want = CHUNK;
        if (budget >= 0) {
            if (budget == 0)
                return result(DONE, total, NULL);
            if ((size_t)budget < want)
                want = (size_t)budget;
        }
        n = recv(src, buf, want, 0);
        if (n < 0) {
            r = failed();
            if (r < 0)
                continue;
            return r ? NULL : result(DRAINED, total, NULL);
        }
        if (n == 0)
            return result(END, total, NULL);
        total += n;
        if (budget > 0)
            budget -= n;
        for (;;) {
            sent = send(dst, buf, (size_t)n, MSG_NOSIGNAL);
            if (sent >= 0)
                break;
            r = failed();
            if (r > 0)
                return NULL;
            if (r == 0) {
                sent = 0;
                break;
            }
        }
        if (sent < n) {
            PyObject *tail = PyByteArray_FromStringAndSize(buf + sent, n - sent);
            return tail == NULL ? NULL : result(BLOCKED, total, tail);
        }
        if (n == CHUNK)
            return result(FULL, total, NULL);
        if (short_ok && (size_t)n < want)
            return result(DRAINED, total, NULL);
    }
}

static PyMethodDef methods[] = {
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL, copy_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splice.io._copy",
    .m_doc = "The copy loop of a relayed flow, in C (see splice/io/flow.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__copy(void)
{
    return PyModule_Create(&module);
}
