/* The strict head scanners of splice/wire/http_head.py and http_response.py, in C.
 *
 * Why C: a keep-alive request costs splice ~30 µs of CPU, and scanning its head with
 * the two regex passes (``_STRICT_HEAD.fullmatch``, then ``find_fields`` over the
 * lower-cased copy) took ~2 µs of it for a two-line head and ~6 µs for a browser's
 * twelve lines, the largest share of user time left in the profile (bench/README.md,
 * "The head scanners in C"); a pooled upstream's nine-line response head took ~4 µs.
 * One pass over the bytes here does both passes' work.
 *
 * It is a lexer, nothing more: it accepts exactly the heads the regexes accept and
 * returns what they extract; what the fields mean (Host, framing, smuggling rules)
 * stays in Python. For anything it does not take whole (no blank line yet, a head over
 * ``max_head``, any byte the strict grammar refuses) it returns None and the Python
 * path decides, as it did before: wait, refuse, or hand the head to h11. The regex
 * twins (``scan_strict`` in each module) stay the reference and what an interpreted
 * install runs; tests/wire/test_head_scan.py checks each pair agrees on generated,
 * mutated and random heads.
 *
 *   request-line = method SP request-target SP "HTTP/1." ("0" / "1") CRLF
 *   status-line  = "HTTP/1." ("0" / "1") SP 3DIGIT [ SP reason-phrase ] CRLF
 *   field-line   = field-name ":" *( HTAB / SP / VCHAR / obs-text ) CRLF
 *
 * with method and field-name tokens (RFC 9110 §5.6.2), the target visible ASCII, the
 * status code's first digit 1-5 and the reason phrase made of field-value bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* tchar (RFC 9110 §5.6.2); field-value bytes: HTAB, SP, VCHAR, obs-text */
static unsigned char TCHAR[256], VALUE[256];

static void
tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++)
        TCHAR[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        TCHAR[c] = TCHAR[c - 32] = 1;
    for (const char *e = extra; *e; e++)
        TCHAR[(unsigned char)*e] = 1;
    VALUE['\t'] = 1;
    for (int c = 0x20; c <= 0xff; c++)
        VALUE[c] = c != 0x7f;
}

static inline unsigned char
lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* ``names``' entry equal to the lower-cased name, borrowed; NULL for none */
static PyObject *
wanted(const unsigned char *name, Py_ssize_t n, PyObject *names)
{
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *cand = PyTuple_GET_ITEM(names, k);
        if (PyBytes_GET_SIZE(cand) != n)
            continue;
        const unsigned char *c = (const unsigned char *)PyBytes_AS_STRING(cand);
        Py_ssize_t j = 0;
        while (j < n && lower(name[j]) == c[j])
            j++;
        if (j == n)
            return cand;
    }
    return NULL;
}

/* (name, value) with the value lower-cased and stripped of SP / HTAB at both ends */
static PyObject *
field(PyObject *name, const unsigned char *v, const unsigned char *e)
{
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    PyObject *value = PyBytes_FromStringAndSize(NULL, e - v);
    if (value == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(value);
    for (; v < e; v++)
        *out++ = lower(*v);
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(value);
    return pair;
}

/* The field lines in p[i:stop]: a new list of the wanted (name, value) pairs, Py_None
 * (a new reference) when the grammar refuses a byte, NULL with an exception set. */
static PyObject *
field_lines(const unsigned char *p, Py_ssize_t i, Py_ssize_t stop, PyObject *names)
{
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    while (i < stop) {
        Py_ssize_t name_start = i;
        while (i < stop && TCHAR[p[i]])
            i++;
        Py_ssize_t name_end = i;
        if (name_end == name_start || i >= stop || p[i] != ':') {
            Py_DECREF(fields);
            Py_RETURN_NONE;
        }
        Py_ssize_t value_start = ++i;
        while (i < stop && VALUE[p[i]])
            i++;
        if (stop - i < 2 || p[i] != '\r' || p[i + 1] != '\n') {
            Py_DECREF(fields);
            Py_RETURN_NONE;
        }
        PyObject *name = wanted(p + name_start, name_end - name_start, names);
        if (name != NULL) {
            PyObject *pair = field(name, p + value_start, p + i);
            if (pair == NULL || PyList_Append(fields, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(fields);
                return NULL;
            }
            Py_DECREF(pair);
        }
        i += 2;
    }
    return fields;
}

/* A tuple of the n new references in items (stolen); NULL, all of them dropped, when one
 * of them is NULL or the tuple cannot be made. */
static PyObject *
pack(PyObject **items, int n)
{
    PyObject *t = PyTuple_New(n);
    for (int k = 0; k < n; k++) {
        if (items[k] == NULL || t == NULL) {
            for (int j = 0; j < n; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(t);
            return NULL;
        }
    }
    for (int k = 0; k < n; k++)
        PyTuple_SET_ITEM(t, k, items[k]);
    return t;
}

static PyObject *
bytes_of(const unsigned char *p, Py_ssize_t n)
{
    return PyBytes_FromStringAndSize((const char *)p, n);
}

/* The request head in p[0:stop] (stop: just after its last line's CRLF):
 * (method, target, minor, fields, raw), or Py_None; both new references. */
static PyObject *
request(const unsigned char *p, Py_ssize_t stop, PyObject *names)
{
    Py_ssize_t i = 0;
    while (i < stop && TCHAR[p[i]])
        i++;
    Py_ssize_t method_end = i;
    if (method_end == 0 || i >= stop || p[i] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t target_start = ++i;
    while (i < stop && p[i] >= 0x21 && p[i] <= 0x7e)
        i++;
    Py_ssize_t target_end = i;
    if (target_end == target_start || stop - i < 11 || memcmp(p + i, " HTTP/1.", 8) != 0 ||
        (p[i + 8] != '0' && p[i + 8] != '1') || p[i + 9] != '\r' || p[i + 10] != '\n')
        Py_RETURN_NONE;
    const unsigned char *minor = p + i + 8;
    PyObject *fields = field_lines(p, i + 11, stop, names);
    if (fields == NULL || fields == Py_None)
        return fields;
    PyObject *items[5] = {
        bytes_of(p, method_end),     bytes_of(p + target_start, target_end - target_start),
        bytes_of(minor, 1),          fields,
        bytes_of(p, stop + 2),
    };
    return pack(items, 5);
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The response head in p[0:stop]: (minor, status, fields, raw), or Py_None.
 *   status-line = "HTTP/1." ("0" / "1") SP 3DIGIT [ SP reason-phrase ] CRLF
 * (the first digit 1-5; a missing SP before an empty reason is common and harmless) */
static PyObject *
response(const unsigned char *p, Py_ssize_t stop, PyObject *names)
{
    if (stop < 14 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ' || p[9] < '1' || p[9] > '5' || !is_digit(p[10]) || !is_digit(p[11]))
        Py_RETURN_NONE;
    Py_ssize_t i = 12;
    if (p[i] == ' ') {
        i++;
        while (i < stop && VALUE[p[i]])
            i++;
    }
    if (stop - i < 2 || p[i] != '\r' || p[i + 1] != '\n')
        Py_RETURN_NONE;
    PyObject *fields = field_lines(p, i + 2, stop, names);
    if (fields == NULL || fields == Py_None)
        return fields;
    long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    PyObject *items[4] = {bytes_of(p + 7, 1), PyLong_FromLong(status), fields,
                          bytes_of(p, stop + 2)};
    return pack(items, 4);
}

typedef PyObject *(*head_fn)(const unsigned char *, Py_ssize_t, PyObject *);

/* The arguments (buf, max_head, names) checked, the blank line found within max_head,
 * and ``fn`` run on the head before it. */
static PyObject *
entry(const char *name, head_fn fn, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes 3 arguments (%zd given)", name, nargs);
        return NULL;
    }
    PyObject *names = args[2];
    if (!PyTuple_Check(names)) {
        PyErr_Format(PyExc_TypeError, "%s() needs a tuple of names", name);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, k))) {
            PyErr_Format(PyExc_TypeError, "%s() needs names as bytes", name);
            return NULL;
        }
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    /* a buffer export: while it is held a bytearray cannot be resized under us (a
     * finalizer run by an allocation's garbage collection could try) */
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    PyObject *got = Py_None;
    /* the blank line must end within max_head: end + 4 <= max_head */
    Py_ssize_t limit = view.len < max_head ? view.len : max_head;
    const unsigned char *blank = limit < 4 ? NULL : memmem(p, (size_t)limit, "\r\n\r\n", 4);
    if (blank == NULL)
        Py_INCREF(got);
    else
        got = fn(p, blank - p + 2, names);
    PyBuffer_Release(&view);
    return got;
}

PyDoc_STRVAR(scan_request_doc,
"scan_request(buf, max_head, names, /) -> (method, target, minor, fields, raw) | None\n\n"
"The request head at the start of ``buf`` (any bytes-like object) when it ends within\n"
"``max_head`` bytes and the strict grammar takes all of it; else None. ``fields``:\n"
"the (name, value) pairs, in order, whose lower-cased name is in ``names`` (a tuple\n"
"of lower-case bytes, whose objects are returned as the names), values lower-cased\n"
"and stripped of SP and HTAB; ``raw``: the head's bytes, blank line included.");

static PyObject *
scan_request(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return entry("scan_request", request, args, nargs);
}

PyDoc_STRVAR(scan_response_doc,
"scan_response(buf, max_head, names, /) -> (minor, status, fields, raw) | None\n\n"
"As scan_request, for a response head: its version's minor digit, its status code\n"
"(an int), the wanted fields and its bytes.");

static PyObject *
scan_response(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    return entry("scan_response", response, args, nargs);
}

static PyMethodDef methods[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL, scan_request_doc},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     scan_response_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splice.wire._head_scan",
    .m_doc = "The strict head scanners, in C (the regex passes of http_head.py and\n"
              "http_response.py in one pass).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__head_scan(void)
{
    tables();
    return PyModule_Create(&module);
}
