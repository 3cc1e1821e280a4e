/* The strict request-head scanner of splice/wire/http_head.py, in C.
 *
 * Why C: a keep-alive request costs splice ~30 µs of CPU, and scanning its head with
 * the two regex passes (``_STRICT_HEAD.fullmatch``, then ``find_fields`` over the
 * lower-cased copy) took ~2 µs of it for a two-line head and ~6 µs for a browser's
 * twelve lines, the largest share of user time left in the profile (bench/README.md,
 * "The head scanner in C"). One pass over the bytes here does both.
 *
 * It is a lexer, nothing more: it accepts exactly the heads the regexes accept and
 * returns what they extract; what the fields mean (Host, framing, smuggling rules)
 * stays in Python, in ``_interpret``. For anything it does not take whole (no blank
 * line yet, a head over ``max_head``, any byte the strict grammar refuses) it returns
 * None and the Python path decides, as it did before: wait, 431, or h11. The regex
 * path stays the reference and what an interpreted install runs; tests/wire/
 * test_head_scan.py checks the two agree on generated and mutated heads.
 *
 *   request-line = method SP request-target SP "HTTP/1." ("0" / "1") CRLF
 *   field-line   = field-name ":" *( HTAB / SP / VCHAR / obs-text ) CRLF
 *
 * with method and field-name tokens (RFC 9110 §5.6.2) and the target visible ASCII.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* tchar (RFC 9110 §5.6.2); field-value bytes: HTAB, SP, VCHAR, obs-text */
static unsigned char TCHAR[256], VALUE[256];

/* a wanted name longer than this cannot be one of http_head.py's (the longest is 17) */
#define LONGEST_NAME 64

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
    unsigned char low[LONGEST_NAME];
    if (n > LONGEST_NAME)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++)
        low[k] = lower(name[k]);
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *cand = PyTuple_GET_ITEM(names, k);
        if (PyBytes_GET_SIZE(cand) == n && memcmp(PyBytes_AS_STRING(cand), low, n) == 0)
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
    Py_INCREF(name);
    PyObject *pair = PyTuple_Pack(2, name, value);
    Py_DECREF(name);
    Py_DECREF(value);
    return pair;
}

/* Scan the head in p[0:stop] (stop: just after its last field line's CRLF). Returns
 * the new reference to (method, target, minor, fields, raw), Py_None (new reference)
 * when the grammar refuses a byte, NULL with an exception set. */
static PyObject *
scan_head(const unsigned char *p, Py_ssize_t stop, PyObject *names)
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
    char minor = (char)p[i + 8];
    i += 11;

    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    while (i < stop) {
        Py_ssize_t name_start = i;
        while (i < stop && TCHAR[p[i]])
            i++;
        Py_ssize_t name_end = i;
        if (name_end == name_start || i >= stop || p[i] != ':')
            goto refused;
        Py_ssize_t value_start = ++i;
        while (i < stop && VALUE[p[i]])
            i++;
        if (stop - i < 2 || p[i] != '\r' || p[i + 1] != '\n')
            goto refused;
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
    PyObject *head = PyTuple_New(5);
    PyObject *items[5] = {
        PyBytes_FromStringAndSize((const char *)p, method_end),
        PyBytes_FromStringAndSize((const char *)p + target_start, target_end - target_start),
        PyBytes_FromStringAndSize(&minor, 1),
        fields,
        PyBytes_FromStringAndSize((const char *)p, stop + 2),
    };
    for (int k = 0; k < 5; k++) {
        if (items[k] == NULL || head == NULL) {
            for (int j = 0; j < 5; j++)
                Py_XDECREF(items[j]);
            Py_XDECREF(head);
            return NULL;
        }
    }
    for (int k = 0; k < 5; k++)
        PyTuple_SET_ITEM(head, k, items[k]);
    return head;

refused:
    Py_DECREF(fields);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(scan_doc,
"scan(buf, max_head, names, /) -> (method, target, minor, fields, raw) | None\n\n"
"The request head at the start of ``buf`` (any bytes-like object) when it ends within\n"
"``max_head`` bytes and the strict grammar takes all of it; else None. ``fields``:\n"
"the (name, value) pairs, in order, whose lower-cased name is in ``names`` (a tuple\n"
"of lower-case bytes, whose objects are returned as the names), values lower-cased\n"
"and stripped of SP and HTAB; ``raw``: the head's bytes, blank line included.");

static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "scan() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *names = args[2];
    if (!PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "scan() needs a tuple of names");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, k))) {
            PyErr_SetString(PyExc_TypeError, "scan() needs names as bytes");
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
        got = scan_head(p, blank - p + 2, names);
    PyBuffer_Release(&view);
    return got;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splice.wire._head_scan",
    .m_doc = "The strict request-head scanner, in C (http_head.py's regex path in one pass).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__head_scan(void)
{
    tables();
    return PyModule_Create(&module);
}
