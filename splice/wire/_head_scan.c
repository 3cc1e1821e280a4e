/* The strict head scanners of splice/wire/http_head.py and http_response.py, and the
 * one-record ClientHello of client_hello.py, in C (the ClientHello's part is below).
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
#include <stdint.h>
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

/* The names a scan looks for, and a 256-bit signature of their (first byte, length)
 * pairs. Most field lines of a request (User-Agent, Cookie, Sec-Fetch-*, Referer...)
 * are no wanted name, and there are 30-odd names (every spelling of the forwarding
 * fields): the signature turns such a line away without a pass over the names. */
typedef struct {
    PyObject *tuple;
    uint64_t sig[4];
} Names;

static inline unsigned
sig_bit(unsigned char first, Py_ssize_t n)
{
    return ((unsigned)lower(first) * 31u + (unsigned)n) & 255u;
}

/* The Names of tuple ``names``: checked and signed once, then kept (with a reference)
 * for the next calls; two slots, one per scanner's module constant. NULL with a
 * TypeError when ``names`` is not a tuple of bytes. */
static const Names *
names_of(const char *fn, PyObject *names)
{
    static Names slots[2];
    static int next;
    for (int k = 0; k < 2; k++)
        if (slots[k].tuple == names)
            return &slots[k];
    if (!PyTuple_Check(names)) {
        PyErr_Format(PyExc_TypeError, "%s() needs a tuple of names", fn);
        return NULL;
    }
    Names fresh = {names, {0, 0, 0, 0}};
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
        PyObject *cand = PyTuple_GET_ITEM(names, k);
        if (!PyBytes_Check(cand)) {
            PyErr_Format(PyExc_TypeError, "%s() needs names as bytes", fn);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(cand);
        if (n > 0) {
            unsigned b = sig_bit((unsigned char)PyBytes_AS_STRING(cand)[0], n);
            fresh.sig[b >> 6] |= (uint64_t)1 << (b & 63);
        }
    }
    Names *slot = &slots[next];
    next ^= 1;
    Py_INCREF(names);
    Py_XDECREF(slot->tuple);
    *slot = fresh;
    return slot;
}

/* ``names``' entry equal to the lower-cased name, borrowed; NULL for none */
static PyObject *
wanted(const unsigned char *name, Py_ssize_t n, const Names *names)
{
    unsigned b = sig_bit(name[0], n);
    if (!(names->sig[b >> 6] >> (b & 63) & 1))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(names->tuple);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *cand = PyTuple_GET_ITEM(names->tuple, k);
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

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define STRIDE 1
/* The bytes of the 8 at p that are below 0x20 or are 0x7f (field-value bytes but for
 * HTAB, which this takes for a refused one), each as its high bit. The usual bit trick
 * (a byte below n borrows into its high bit) may also flag bytes above the first flagged
 * one, never below it: the lowest bit set is the first such byte, exactly. */
static inline uint64_t
special8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
    uint64_t del = x ^ (0x7f * ones);
    return (((x - 0x20 * ones) & ~x) | ((del - ones) & ~del)) & high;
}
#endif

/* The index just past the field-value bytes at p[i:limit]: 8 bytes at a time, to the
 * first byte that is not plain (the CR that ends the line, mostly); a byte at a time
 * over the last few (and everywhere on a big-endian machine). */
static inline Py_ssize_t
value_end(const unsigned char *p, Py_ssize_t i, Py_ssize_t limit)
{
#ifdef STRIDE
    while (limit - i >= 8) {
        uint64_t m = special8(p + i);
        if (m == 0) {
            i += 8;
            continue;
        }
        i += __builtin_ctzll(m) >> 3;
        if (p[i] != '\t')
            return i;
        i++;
    }
#endif
    while (i < limit && VALUE[p[i]])
        i++;
    return i;
}

/* The index just past the tchar bytes at p[i:limit]: four table looks per test */
static inline Py_ssize_t
token_end(const unsigned char *p, Py_ssize_t i, Py_ssize_t limit)
{
    while (limit - i >= 4 && (TCHAR[p[i]] & TCHAR[p[i + 1]] & TCHAR[p[i + 2]] & TCHAR[p[i + 3]]))
        i += 4;
    while (i < limit && TCHAR[p[i]])
        i++;
    return i;
}

/* The field lines from p[i] to the blank line that ends the head, which must end within
 * p[0:limit]: a new list of the wanted (name, value) pairs, with *end set to the index
 * just past the blank line; Py_None (a new reference) when the grammar refuses a byte or
 * the blank line is not there; NULL with an exception set. Field values hold no CR, so
 * the first blank line this finds is the first CRLF CRLF of the bytes. */
static PyObject *
field_lines(const unsigned char *p, Py_ssize_t i, Py_ssize_t limit, const Names *names,
            Py_ssize_t *end)
{
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    for (;;) {
        if (limit - i >= 2 && p[i] == '\r' && p[i + 1] == '\n') {
            *end = i + 2;
            return fields;
        }
        Py_ssize_t name_start = i;
        i = token_end(p, i, limit);
        Py_ssize_t name_end = i;
        if (name_end == name_start || i >= limit || p[i] != ':')
            break;
        Py_ssize_t value_start = ++i;
        i = value_end(p, i, limit);
        if (limit - i < 2 || p[i] != '\r' || p[i + 1] != '\n')
            break;
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
    Py_DECREF(fields);
    Py_RETURN_NONE;
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

/* The request head at the start of p[0:limit]:
 * (method, target, minor, fields, raw), or Py_None; both new references. */
static PyObject *
request(const unsigned char *p, Py_ssize_t limit, const Names *names)
{
    Py_ssize_t i = token_end(p, 0, limit);
    Py_ssize_t method_end = i;
    if (method_end == 0 || i >= limit || p[i] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t target_start = ++i;
    while (i < limit && p[i] >= 0x21 && p[i] <= 0x7e)
        i++;
    Py_ssize_t target_end = i;
    if (target_end == target_start || limit - i < 11 || memcmp(p + i, " HTTP/1.", 8) != 0 ||
        (p[i + 8] != '0' && p[i + 8] != '1') || p[i + 9] != '\r' || p[i + 10] != '\n')
        Py_RETURN_NONE;
    const unsigned char *minor = p + i + 8;
    Py_ssize_t end;
    PyObject *fields = field_lines(p, i + 11, limit, names, &end);
    if (fields == NULL || fields == Py_None)
        return fields;
    PyObject *items[5] = {
        bytes_of(p, method_end),     bytes_of(p + target_start, target_end - target_start),
        bytes_of(minor, 1),          fields,
        bytes_of(p, end),
    };
    return pack(items, 5);
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The response head at the start of p[0:limit]: (minor, status, fields, raw), or Py_None.
 *   status-line = "HTTP/1." ("0" / "1") SP 3DIGIT [ SP reason-phrase ] CRLF
 * (the first digit 1-5; a missing SP before an empty reason is common and harmless) */
static PyObject *
response(const unsigned char *p, Py_ssize_t limit, const Names *names)
{
    if (limit < 14 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != ' ' || p[9] < '1' || p[9] > '5' || !is_digit(p[10]) || !is_digit(p[11]))
        Py_RETURN_NONE;
    Py_ssize_t i = 12;
    if (p[i] == ' ')
        i = value_end(p, i + 1, limit);
    if (limit - i < 2 || p[i] != '\r' || p[i + 1] != '\n')
        Py_RETURN_NONE;
    Py_ssize_t end;
    PyObject *fields = field_lines(p, i + 2, limit, names, &end);
    if (fields == NULL || fields == Py_None)
        return fields;
    long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    PyObject *items[4] = {bytes_of(p + 7, 1), PyLong_FromLong(status), fields,
                          bytes_of(p, end)};
    return pack(items, 4);
}

typedef PyObject *(*head_fn)(const unsigned char *, Py_ssize_t, const Names *);

/* The arguments (buf, max_head, names) checked and ``fn`` run on the bytes the head must
 * end within. One pass: the scan finds the blank line as it reads the lines (a search
 * for CRLF CRLF first cost more than the scan: glibc's memmem, ~1,200 instructions for
 * nginx's 250-byte response head). */
static PyObject *
entry(const char *name, head_fn fn, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes 3 arguments (%zd given)", name, nargs);
        return NULL;
    }
    const Names *names = names_of(name, args[2]);
    if (names == NULL)
        return NULL;
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    /* a buffer export: while it is held a bytearray cannot be resized under us (a
     * finalizer run by an allocation's garbage collection could try) */
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* the blank line must end within max_head */
    Py_ssize_t limit = view.len < max_head ? view.len : max_head;
    PyObject *got = fn(view.buf, limit < 0 ? 0 : limit, names);
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

/* -- the TLS ClientHello ---------------------------------------------------- */

/* The one-record ClientHello of splice/wire/client_hello.py, in C: the parse is the
 * largest user-space share of a TLS passthrough connection (~17 % of its instructions
 * under callgrind, bench/README.md, "The ClientHello in C"), most of it in boxing
 * extension types, a set of them, and the host name's str checks.
 *
 * Like the head scanners it declines (None) anything it does not take whole, and the
 * Python parser then decides: a hello not all there yet, one fragmented over several
 * records, over ``max_size``, malformed in any way (Python words the error), with
 * more than MAX_EXTS extensions (the repeat check here is quadratic), or offering an
 * ALPN name with a byte Python would escape for the log. What it takes, it returns
 * exactly as Python would. */

/* RFC 8446 §5.1 and §4: record header, handshake header; §4.1.2: version + random */
#define RECORD 5
#define HANDSHAKE 4
#define FIXED 34
#define MAX_FRAGMENT (1 << 14)
#define MAX_SESSION_ID 32
/* RFC 1035 §2.3.4, in text form */
#define MAX_NAME 253
#define MAX_LABEL 63
/* real hellos carry 10-25 extensions */
#define MAX_EXTS 64

static unsigned char NAME[256]; /* host name bytes, mapped to lower case; 0: refused */

static void
name_table(void)
{
    for (int c = 'a'; c <= 'z'; c++)
        NAME[c] = NAME[c - 32] = (unsigned char)c;
    for (int c = '0'; c <= '9'; c++)
        NAME[c] = (unsigned char)c;
    NAME['-'] = '-';
    NAME['_'] = '_';
    NAME['.'] = '.';
}

static inline unsigned
u16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* An opaque<1..2^16-1> vector filling [pos, end) exactly: where its contents start,
 * or -1 */
static Py_ssize_t
vector(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end)
{
    if (pos + 2 > end)
        return -1;
    Py_ssize_t inner = pos + 2 + u16(m + pos);
    return inner != end || inner == pos + 2 ? -1 : pos + 2;
}

/* The host name, lower-cased, without one trailing dot; NULL with no error set: refused */
static PyObject *
host_name(const unsigned char *raw, Py_ssize_t n)
{
    if (n > 0 && raw[n - 1] == '.')
        n--;
    if (n == 0 || n > MAX_NAME)
        return NULL;
    Py_ssize_t label = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = NAME[raw[i]];
        if (c == 0)
            return NULL;
        if (c != '.')
            label++;
        else if (label == 0)
            return NULL;
        else
            label = 0;
        if (label > MAX_LABEL)
            return NULL;
    }
    if (label == 0)
        return NULL;
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = NAME[raw[i]];
    return s;
}

/* RFC 6066 §3: the one host_name of the ServerNameList in [pos, end). Sets *name (a
 * new reference, or left NULL with none named); -1: refused or an error set */
static int
server_name(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end, PyObject **name)
{
    pos = vector(m, pos, end);
    if (pos < 0)
        return -1;
    while (pos < end) {
        if (pos + 3 > end)
            return -1;
        unsigned char kind = m[pos];
        Py_ssize_t start = pos + 3;
        pos = start + u16(m + pos + 1);
        if (pos > end)
            return -1;
        if (kind != 0)
            continue;
        if (*name != NULL)
            return -1;
        *name = host_name(m + start, pos - start);
        if (*name == NULL)
            return -1;
    }
    return 0;
}

/* RFC 7301 §3.1: the protocol names in [pos, end), as a tuple; NULL with no error set:
 * refused */
static PyObject *
alpn(const unsigned char *m, Py_ssize_t pos, Py_ssize_t end)
{
    pos = vector(m, pos, end);
    if (pos < 0)
        return NULL;
    PyObject *names = PyList_New(0);
    if (names == NULL)
        return NULL;
    while (pos < end) {
        Py_ssize_t start = pos + 1;
        pos = start + m[pos];
        if (pos > end || pos == start)
            goto refused;
        for (Py_ssize_t i = start; i < pos; i++)
            if (m[i] <= 0x20 || m[i] >= 0x7f)
                goto refused; /* Python escapes it for the log */
        PyObject *one = PyUnicode_FromStringAndSize((const char *)m + start, pos - start);
        if (one == NULL || PyList_Append(names, one) < 0) {
            Py_XDECREF(one);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(one);
    }
    PyObject *out = PyList_AsTuple(names);
    Py_DECREF(names);
    return out;
refused:
    Py_DECREF(names);
    return NULL;
}

/* RFC 8446 §4.1.2 from the handshake header to the end of the extensions, over the
 * message m[0:end]: (server_name, alpn, length) or None, NULL on an error */
static PyObject *
hello(const unsigned char *m, Py_ssize_t end, Py_ssize_t length)
{
    PyObject *name = NULL, *offered = NULL;
    Py_ssize_t pos = HANDSHAKE + FIXED;
    if (pos >= end || m[pos] > MAX_SESSION_ID)
        goto refused;
    pos += 1 + m[pos];
    if (pos + 2 > end)
        goto refused;
    unsigned n = u16(m + pos);
    pos += 2 + n;
    if (pos >= end || n < 2 || n % 2)
        goto refused;
    n = m[pos];
    pos += 1 + n;
    if (pos > end || n == 0)
        goto refused;
    if (pos < end) {
        if (pos + 2 > end)
            goto refused;
        Py_ssize_t block = pos + 2 + u16(m + pos);
        if (block != end)
            goto refused;
        pos += 2;
        unsigned kinds[MAX_EXTS];
        int count = 0;
        while (pos < block) {
            if (pos + 4 > block || count == MAX_EXTS)
                goto refused;
            unsigned kind = u16(m + pos);
            Py_ssize_t start = pos + 4;
            pos = start + u16(m + pos + 2);
            if (pos > block)
                goto refused;
            for (int k = 0; k < count; k++)
                if (kinds[k] == kind)
                    goto refused;
            kinds[count++] = kind;
            if (kind == 0) {
                if (server_name(m, start, pos, &name) < 0)
                    goto refused;
            } else if (kind == 16) {
                offered = alpn(m, start, pos);
                if (offered == NULL)
                    goto refused;
            }
        }
    }
    if (offered == NULL) {
        offered = PyTuple_New(0);
        if (offered == NULL)
            goto refused;
    }
    PyObject *len = PyLong_FromSsize_t(length);
    PyObject *out = len ? PyTuple_Pack(3, name ? name : Py_None, offered, len) : NULL;
    Py_XDECREF(len);
    Py_XDECREF(name);
    Py_DECREF(offered);
    return out;
refused: /* or failed: an error set by an allocation stays set */
    Py_XDECREF(name);
    Py_XDECREF(offered);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(scan_hello_doc,
"scan_hello(buf, max_size, /) -> (server_name, alpn, length) | None\n\n"
"The ClientHello at the start of ``buf`` (any bytes-like object) when one handshake\n"
"record of at most ``max_size`` bytes holds all of it and it is well formed: its SNI\n"
"host name (lower-cased, no trailing dot; None if absent), its ALPN names (a tuple of\n"
"str) and the record's length. None for anything else, which parse_client_hello then\n"
"handles: more bytes to wait for, more records, an error to word.");

static PyObject *
scan_hello(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "scan_hello() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t max_size = PyLong_AsSsize_t(args[1]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    PyObject *got = NULL;
    if (view.len >= RECORD + HANDSHAKE && p[0] == 22 && p[1] == 3 && p[RECORD] == 1) {
        Py_ssize_t size = u16(p + 3), end = RECORD + size;
        Py_ssize_t body = (Py_ssize_t)p[6] << 16 | p[7] << 8 | p[8];
        if (size > 0 && size <= MAX_FRAGMENT && end <= max_size && end <= view.len
            && size == HANDSHAKE + body)
            got = hello(p + RECORD, size, end);
    }
    if (got == NULL && !PyErr_Occurred()) {
        got = Py_None;
        Py_INCREF(got);
    }
    PyBuffer_Release(&view);
    return got;
}

static PyMethodDef methods[] = {
    {"scan_request", (PyCFunction)(void (*)(void))scan_request, METH_FASTCALL, scan_request_doc},
    {"scan_response", (PyCFunction)(void (*)(void))scan_response, METH_FASTCALL,
     scan_response_doc},
    {"scan_hello", (PyCFunction)(void (*)(void))scan_hello, METH_FASTCALL, scan_hello_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splice.wire._head_scan",
    .m_doc = "The heads splice routes on, scanned in C: HTTP request and response heads\n"
              "(the regex passes of http_head.py and http_response.py in one pass) and\n"
              "the one-record TLS ClientHello (client_hello.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__head_scan(void)
{
    tables();
    name_table();
    return PyModule_Create(&module);
}
