/* features._replay: a batch's store reply read back in C, record by record; and values folded into bases.
 *
 * The same steps as features.blobs.replay (the definition: the twin's steps of features.memory), over the binary
 * values of features.blobs, for a whole batch in one call: each transaction's card is advanced to its length before
 * the transaction (what it read before it), then to its length after it; its terminal and merchant to theirs. Python
 * keeps the names (which value is which entity); this file only sees values, indexes and the layout's integers.
 * features.reader.read_compiled is its Python side, and the parity tests hold it equal to replay and the twin.
 * fold (features.fold.fold's C path) replays each value to its end and writes the state as a base, byte for byte
 * what the numpy fold writes. Every argument is taken as a tuple of its own before any work: no Python code runs
 * while the values are read.
 *
 * Formats (all little-endian; features.blobs has the authoritative description):
 *   card   CARD_HEAD (50 bytes: u16 flags, u16 entries of m5 h d f, u16 items per kind, i64 latest time,
 *          i64 card-present time, f64 lat, f64 lon), rings m5 h d as (i32 bucket, i32 count, i64 cents, i64 cents²),
 *          f as (i32 day, i32 frauds), per kind i64 ids then i64 last-seen times; then RECORDs (74 bytes)
 *   place  PLACE_HEAD (u16 entries of d, f), d and f as (i32 day, i32 count); then i32 days
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RECORD_SIZE 74
#define CARD_HEAD_SIZE 50
#define PLACE_HEAD_SIZE 4
#define KINDS 4 /* terminal, merchant, country, device: the record's order */
#define TERMINAL 0
#define DEVICE 3
#define MAX_WINDOWS 8
#define CARD_WIDTH 20
#define HEAD_SIZE 13 /* u8 applied, u32 card, terminal and merchant value lengths after the transaction */

typedef struct {
    int64_t size[3], kept[3];
    int card_windows;
    int window_ring[MAX_WINDOWS];
    int64_t window_length[MAX_WINDOWS];
    int64_t card_frauds;
    int place_windows, fraud_windows;
    int64_t place_window[MAX_WINDOWS], fraud_window[MAX_WINDOWS];
    int64_t label_delay, place_kept, recent_items;
    int place_width, reply_width;
} Layout;

typedef struct {
    int64_t idx, value[3];
} Entry;

typedef struct { /* entries sorted by bucket; capacity for every record the value holds */
    Entry *entry;
    Py_ssize_t n;
} Ring;

typedef struct {
    int64_t *id, *time;
    Py_ssize_t n;
} Items;

typedef struct {
    const uint8_t *blob;
    Py_ssize_t length, at, records;
    Ring ring[3], frauds;
    int has_pt, has_pcp;
    int64_t pt, pcp_t;
    double lat, lon;
    Items items[KINDS];
} Card;

typedef struct {
    const uint8_t *blob;
    Py_ssize_t length, at, records;
    Ring days, frauds;
} Place;

typedef struct {
    int64_t t, amount, square, id[KINDS];
    int geo, mask;
    double lat, lon;
} Record;

static int64_t i64_at(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static int32_t i32_at(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t u16_at(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static double f64_at(const uint8_t *p) { double v; memcpy(&v, p, 8); return v; }

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static void read_record(const uint8_t *p, Record *r) {
    r->t = i64_at(p);
    r->amount = i64_at(p + 8);
    r->square = i64_at(p + 16);
    r->geo = p[24];
    r->lat = f64_at(p + 25);
    r->lon = f64_at(p + 33);
    r->mask = p[41];
    for (int k = 0; k < KINDS; k++) r->id[k] = i64_at(p + 42 + 8 * k);
}

/* --- rings: features.memory._add, _prune, _sum ---------------------------------------------------------------- */

static void ring_prune(Ring *r, int64_t above) { /* keep the entries with a bucket above `above` */
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < r->n; i++)
        if (r->entry[i].idx > above) r->entry[kept++] = r->entry[i];
    r->n = kept;
}

/* Add `delta` to bucket `idx` of a ring that advances with it (its newest bucket moves up to idx, older ones fall
 * out past `kept`); a bucket at or below newest - kept is gone and is not added. Capacity is the caller's. */
static void ring_add(Ring *r, int64_t idx, int64_t kept, const int64_t delta[3]) {
    int has_top = r->n > 0;
    int64_t top = has_top ? r->entry[r->n - 1].idx : 0;
    if (has_top && idx <= top - kept) return;
    Py_ssize_t i = 0;
    while (i < r->n && r->entry[i].idx < idx) i++;
    if (i < r->n && r->entry[i].idx == idx) {
        for (int d = 0; d < 3; d++) r->entry[i].value[d] += delta[d];
    } else {
        memmove(&r->entry[i + 1], &r->entry[i], (size_t)(r->n - i) * sizeof(Entry));
        r->entry[i].idx = idx;
        for (int d = 0; d < 3; d++) r->entry[i].value[d] = delta[d];
        r->n++;
    }
    if (!has_top || idx > top) ring_prune(r, idx - kept);
}

/* Sums of the entries in [first, last] that are still kept (above top - kept); zeros without a top. */
static void ring_sum(const Ring *r, int64_t first, int64_t last, int64_t kept, int has_top, int64_t top,
                     int64_t out[3]) {
    out[0] = out[1] = out[2] = 0;
    if (!has_top) return;
    int64_t low = first > top - kept + 1 ? first : top - kept + 1;
    for (Py_ssize_t i = 0; i < r->n; i++) {
        int64_t idx = r->entry[i].idx;
        if (idx >= low && idx <= last)
            for (int d = 0; d < 3; d++) out[d] += r->entry[i].value[d];
    }
}

static int ring_top(const Ring *r, int64_t *top) {
    if (r->n == 0) return 0;
    *top = r->entry[r->n - 1].idx;
    return 1;
}

/* --- parsing ---------------------------------------------------------------------------------------------------- */

static void *arena_take(char **arena, size_t bytes) {
    void *p = *arena;
    *arena += (bytes + 15) & ~(size_t)15;
    return p;
}

/* Bytes of arena card_load takes for a value: each ring room for one entry per record, each kind one item per record,
 * and 16 bytes of alignment per part. */
static size_t card_space(const uint8_t *blob, Py_ssize_t length) {
    Py_ssize_t room = (blob ? length : 0) / RECORD_SIZE + 1, entries = 3 * room + 1, items = KINDS * 2 * (room + 1);
    if (blob != NULL && length >= CARD_HEAD_SIZE) {
        for (int k = 0; k < 4; k++) entries += u16_at(blob + 2 + 2 * k);
        for (int k = 0; k < KINDS; k++) items += 2 * u16_at(blob + 10 + 2 * k);
    }
    return (size_t)entries * sizeof(Entry) + (size_t)items * 8 + 12 * 16;
}

static void load_ring(Ring *r, char **arena, const uint8_t *p, Py_ssize_t n, Py_ssize_t room, int wide) {
    r->entry = arena_take(arena, (size_t)(n + room) * sizeof(Entry));
    r->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Entry *e = &r->entry[i];
        if (wide) {
            e->idx = i32_at(p + 24 * i);
            e->value[0] = i32_at(p + 24 * i + 4);
            e->value[1] = i64_at(p + 24 * i + 8);
            e->value[2] = i64_at(p + 24 * i + 16);
        } else {
            e->idx = i32_at(p + 8 * i);
            e->value[0] = i32_at(p + 8 * i + 4);
            e->value[1] = e->value[2] = 0;
        }
    }
}

static int card_load(Card *c, const uint8_t *blob, Py_ssize_t length, char **arena) {
    memset(c, 0, sizeof(*c));
    c->blob = blob;
    c->length = blob ? length : 0;
    Py_ssize_t room = c->length / RECORD_SIZE + 1;
    if (blob == NULL) {
        for (int r = 0; r < 3; r++) load_ring(&c->ring[r], arena, NULL, 0, room, 1);
        load_ring(&c->frauds, arena, NULL, 0, 1, 0);
        for (int k = 0; k < KINDS; k++) {
            c->items[k].id = arena_take(arena, (size_t)(room + 1) * 8);
            c->items[k].time = arena_take(arena, (size_t)(room + 1) * 8);
        }
        return 0;
    }
    if (length < CARD_HEAD_SIZE) goto bad;
    int flags = u16_at(blob);
    Py_ssize_t count[4], items[KINDS], at = CARD_HEAD_SIZE;
    for (int k = 0; k < 4; k++) count[k] = u16_at(blob + 2 + 2 * k);
    for (int k = 0; k < KINDS; k++) items[k] = u16_at(blob + 10 + 2 * k);
    Py_ssize_t base = CARD_HEAD_SIZE + (count[0] + count[1] + count[2]) * 24 + count[3] * 8;
    for (int k = 0; k < KINDS; k++) base += items[k] * 16;
    if (base > length) goto bad;
    c->pt = i64_at(blob + 18);
    c->pcp_t = i64_at(blob + 26);
    c->lat = f64_at(blob + 34);
    c->lon = f64_at(blob + 42);
    c->has_pt = flags & 1;
    c->has_pcp = (flags & 2) != 0;
    for (int r = 0; r < 3; r++) {
        load_ring(&c->ring[r], arena, blob + at, count[r], room, 1);
        at += count[r] * 24;
    }
    load_ring(&c->frauds, arena, blob + at, count[3], 1, 0);
    at += count[3] * 8;
    for (int k = 0; k < KINDS; k++) {
        Items *it = &c->items[k];
        it->n = items[k];
        it->id = arena_take(arena, (size_t)(items[k] + room + 1) * 8);
        it->time = arena_take(arena, (size_t)(items[k] + room + 1) * 8);
        for (Py_ssize_t i = 0; i < items[k]; i++) {
            it->id[i] = i64_at(blob + at + 8 * i);
            it->time[i] = i64_at(blob + at + 8 * (items[k] + i));
        }
        at += items[k] * 16;
    }
    c->at = base;
    c->records = (length - base) / RECORD_SIZE;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "a card value is shorter than its head says");
    return -1;
}

static int place_load(Place *p, const uint8_t *blob, Py_ssize_t length, char **arena) {
    memset(p, 0, sizeof(*p));
    p->blob = blob;
    p->length = blob ? length : 0;
    Py_ssize_t room = p->length / 4 + 1, nd = 0, nf = 0;
    if (blob != NULL) {
        if (length < PLACE_HEAD_SIZE) goto bad;
        nd = u16_at(blob);
        nf = u16_at(blob + 2);
        if (PLACE_HEAD_SIZE + (nd + nf) * 8 > length) goto bad;
    }
    load_ring(&p->days, arena, blob ? blob + PLACE_HEAD_SIZE : NULL, nd, room, 0);
    load_ring(&p->frauds, arena, blob ? blob + PLACE_HEAD_SIZE + nd * 8 : NULL, nf, 1, 0);
    p->at = blob ? PLACE_HEAD_SIZE + (nd + nf) * 8 : 0;
    p->records = blob ? (length - p->at) / 4 : 0;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "a terminal or merchant value is shorter than its head says");
    return -1;
}

/* Bytes of arena place_load takes: the rings' entries (at most length / 8) and one more day per record. */
static size_t place_space(Py_ssize_t length) { return (size_t)(length / 8 + length / 4 + 3) * sizeof(Entry) + 2 * 16; }

/* --- the steps: features.memory.apply_card, apply_place ---------------------------------------------------------- */

static void card_apply(Card *c, const Record *rec, const Layout *L) {
    for (int r = 0; r < 3; r++) {
        int64_t delta[3] = {1, rec->amount, rec->square};
        ring_add(&c->ring[r], floor_div(rec->t, L->size[r]), L->kept[r], delta);
    }
    int64_t top;
    if (c->frauds.n && ring_top(&c->ring[2], &top)) ring_prune(&c->frauds, top - L->kept[2]);
    if (!c->has_pt || rec->t > c->pt) {
        c->has_pt = 1;
        c->pt = rec->t;
    }
    if (rec->geo && (!c->has_pcp || rec->t >= c->pcp_t)) {
        c->has_pcp = 1;
        c->pcp_t = rec->t;
        c->lat = rec->lat;
        c->lon = rec->lon;
    }
    for (int k = 0; k < KINDS; k++) {
        if (!(rec->mask >> k & 1)) continue;
        Items *it = &c->items[k];
        Py_ssize_t i = 0;
        while (i < it->n && it->id[i] != rec->id[k]) i++;
        if (i == it->n) {
            it->id[i] = rec->id[k];
            it->time[i] = rec->t;
            it->n++;
        } else if (rec->t > it->time[i]) {
            it->time[i] = rec->t;
        }
        if (it->n > L->recent_items) { /* forget the least recent (by last use, then id) */
            Py_ssize_t least = 0;
            for (Py_ssize_t j = 1; j < it->n; j++)
                if (it->time[j] < it->time[least] || (it->time[j] == it->time[least] && it->id[j] < it->id[least]))
                    least = j;
            it->n--;
            it->id[least] = it->id[it->n];
            it->time[least] = it->time[it->n];
        }
    }
}

static int card_to(Card *c, Py_ssize_t length, const Layout *L) {
    if (c->at < length && length > c->length) {
        PyErr_SetString(PyExc_ValueError, "store reply names a card length past its value");
        return -1;
    }
    Record rec;
    while (c->at < length) {
        if (c->at + RECORD_SIZE > c->length) {
            PyErr_SetString(PyExc_ValueError, "a card value ends inside a record");
            return -1;
        }
        read_record(c->blob + c->at, &rec);
        card_apply(c, &rec, L);
        c->at += RECORD_SIZE;
    }
    return 0;
}

static int place_to(Place *p, Py_ssize_t length, const Layout *L) {
    if (p->at < length && length > p->length) {
        PyErr_SetString(PyExc_ValueError, "store reply names a place length past its value");
        return -1;
    }
    static const int64_t one[3] = {1, 0, 0};
    int64_t top;
    while (p->at < length) {
        if (p->at + 4 > p->length) {
            PyErr_SetString(PyExc_ValueError, "a terminal or merchant value ends inside a record");
            return -1;
        }
        ring_add(&p->days, i32_at(p->blob + p->at), L->place_kept, one);
        if (p->frauds.n && ring_top(&p->days, &top)) ring_prune(&p->frauds, top - L->place_kept);
        p->at += 4;
    }
    return 0;
}

/* --- what a transaction reads: features.memory.previous_of, card_row, place_row ---------------------------------- */

static int has_item(const Items *it, int64_t id) {
    for (Py_ssize_t i = 0; i < it->n; i++)
        if (it->id[i] == id) return 1;
    return 0;
}

static void card_row(const Card *c, const Record *rec, const int64_t seen[2], const Layout *L, int64_t *out) {
    int64_t sums[3];
    for (int w = 0; w < L->card_windows; w++) {
        int r = L->window_ring[w];
        int64_t last = floor_div(rec->t, L->size[r]), top;
        int has = ring_top(&c->ring[r], &top);
        ring_sum(&c->ring[r], last - L->window_length[w] + 1, last, L->kept[r], has, top, sums);
        for (int d = 0; d < 3; d++) *out++ = sums[d];
    }
    int64_t top, day = floor_div(rec->t, L->size[2]);
    int has = ring_top(&c->ring[2], &top);
    *out++ = has && day > top - L->kept[2];
    ring_sum(&c->frauds, day - L->card_frauds + 1, day, L->kept[2], has && c->frauds.n, top, sums);
    *out++ = sums[0];
    int64_t since = rec->t - L->size[2];
    for (int k = 0; k < 3; k++) { /* distinct terminals, merchants, countries in the 24h before */
        if (!(rec->mask >> k & 1)) {
            *out++ = -1;
            continue;
        }
        int64_t distinct = 0;
        for (Py_ssize_t i = 0; i < c->items[k].n; i++) distinct += c->items[k].time[i] > since;
        *out++ = distinct;
    }
    *out++ = seen[0];
    *out++ = seen[1];
}

static void place_row(const Place *p, int64_t day, const Layout *L, int64_t *out) {
    int64_t top, sums[3];
    int has = ring_top(&p->days, &top);
    for (int w = 0; w < L->place_windows; w++) {
        ring_sum(&p->days, day - L->place_window[w] + 1, day, L->place_kept, has, top, sums);
        *out++ = sums[0];
    }
    int64_t last = day - L->label_delay;
    for (int w = 0; w < L->fraud_windows; w++) {
        ring_sum(&p->frauds, last - L->fraud_window[w] + 1, last, L->place_kept, has && p->frauds.n, top, sums);
        *out++ = sums[0];
        ring_sum(&p->days, last - L->fraud_window[w] + 1, last, L->place_kept, has, top, sums);
        *out++ = sums[0];
    }
}

/* --- the call -------------------------------------------------------------------------------------------------- */

/* The integers of a sequence, as a tuple of the caller's own (no later Python code can change it under us). */
static PyObject *own_tuple(PyObject *seq) {
    PyObject *tuple = PySequence_Tuple(seq);
    if (!tuple) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++)
        if (!PyLong_CheckExact(PyTuple_GET_ITEM(tuple, i))) {
            Py_DECREF(tuple);
            PyErr_SetString(PyExc_TypeError, "expected a sequence of integers");
            return NULL;
        }
    return tuple;
}

static int parse_layout(PyObject *seq, Layout *L) {
    int64_t v[64];
    PyObject *tuple = own_tuple(seq);
    if (!tuple) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(tuple), at = 0;
    for (Py_ssize_t i = 0; i < n && i < 64; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i));
        if (v[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(tuple);
            return -1;
        }
    }
    Py_DECREF(tuple);
    if (n > 64) goto bad;
#define TAKE(dst) do { if (at >= n) goto bad; (dst) = v[at++]; } while (0)
#define TAKE_IN(dst, low, high) do { if (at >= n || v[at] < (low) || v[at] > (high)) goto bad; (dst) = (int)v[at++]; } while (0)
    for (int r = 0; r < 3; r++) TAKE(L->size[r]);
    for (int r = 0; r < 3; r++) TAKE(L->kept[r]);
    TAKE_IN(L->card_windows, 0, MAX_WINDOWS);
    for (int w = 0; w < L->card_windows; w++) {
        TAKE_IN(L->window_ring[w], 0, 2);
        TAKE(L->window_length[w]);
    }
    TAKE(L->card_frauds);
    TAKE_IN(L->place_windows, 0, MAX_WINDOWS);
    for (int w = 0; w < L->place_windows; w++) TAKE(L->place_window[w]);
    TAKE_IN(L->fraud_windows, 0, MAX_WINDOWS);
    for (int w = 0; w < L->fraud_windows; w++) TAKE(L->fraud_window[w]);
    TAKE(L->label_delay);
    TAKE(L->place_kept);
    TAKE(L->recent_items);
#undef TAKE
#undef TAKE_IN
    if (at != n || L->size[0] <= 0 || L->size[1] <= 0 || L->size[2] <= 0) goto bad;
    if (1 + 3 * L->card_windows + 7 != CARD_WIDTH) goto bad; /* applied, windows, day kept, frauds, 5 items */
    L->place_width = L->place_windows + 2 * L->fraud_windows;
    L->reply_width = CARD_WIDTH + 2 * L->place_width;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "layout does not describe the store's reply");
    return -1;
}

/* Each transaction's entity index (-1: none), checked against the number of entities. */
static int indexes(PyObject *tuple, Py_ssize_t n, Py_ssize_t entities, Py_ssize_t *out, const char *what) {
    if (PyTuple_GET_SIZE(tuple) != n) {
        PyErr_Format(PyExc_ValueError, "%s indexes: %zd for %zd transactions", what, PyTuple_GET_SIZE(tuple), n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(tuple, i));
        if (out[i] == -1 && PyErr_Occurred()) return -1;
        if (out[i] < -1 || out[i] >= entities) {
            PyErr_Format(PyExc_ValueError, "%s index out of range", what);
            return -1;
        }
    }
    return 0;
}

static PyObject *counts_list(Py_ssize_t n, const Py_ssize_t *records) {
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(records[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

PyDoc_STRVAR(read_doc,
"read(heads, records, card_of, terminal_of, merchant_of, cards, places, layout)\n"
"--\n\n"
"A batch's reply values (n x reply width int64) and previous (n x 4 float64) as bytearrays, and the records each\n"
"card and place value holds. heads: the script's HEADs; records: the transactions' RECORDs joined; card_of: each\n"
"transaction's index in cards; terminal_of / merchant_of: its index in places, -1 for none; cards / places: the\n"
"values (bytes, or None for none); layout: the integers of features.reader.layout_vector.");

/* A value's bytes, NULL for None or empty (an entity with no value, as features.blobs reads it). */
static int blob_of(PyObject *v, const uint8_t **blob, Py_ssize_t *length) {
    if (v != Py_None && !PyBytes_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "entity values must be bytes or None");
        return -1;
    }
    *length = v == Py_None ? 0 : PyBytes_GET_SIZE(v);
    *blob = *length ? (const uint8_t *)PyBytes_AS_STRING(v) : NULL;
    return 0;
}

static PyObject *read_reply(PyObject *self, PyObject *args) {
    Py_buffer heads, records;
    PyObject *card_seq, *terminal_seq, *merchant_seq, *card_seq_values, *place_seq_values, *layout_seq;
    if (!PyArg_ParseTuple(args, "y*y*OOOOOO", &heads, &records, &card_seq, &terminal_seq, &merchant_seq,
                          &card_seq_values, &place_seq_values, &layout_seq))
        return NULL;
    PyObject *result = NULL, *values = NULL, *previous = NULL, *card_counts = NULL, *place_counts = NULL;
    PyObject *of[3] = {NULL, NULL, NULL}, *card_values = NULL, *place_values = NULL;
    Py_ssize_t *index = NULL, *card_records = NULL, *place_records = NULL;
    Card *cards = NULL;
    Place *places = NULL;
    char *arena = NULL;
    Layout L;
    Py_ssize_t n = heads.len / HEAD_SIZE;
    /* Every argument as a tuple of our own first: no Python code runs after this to change them. */
    if (parse_layout(layout_seq, &L) < 0 || !(of[0] = own_tuple(card_seq)) || !(of[1] = own_tuple(terminal_seq)) ||
        !(of[2] = own_tuple(merchant_seq)) || !(card_values = PySequence_Tuple(card_seq_values)) ||
        !(place_values = PySequence_Tuple(place_seq_values)))
        goto done;
    Py_ssize_t n_cards = PyTuple_GET_SIZE(card_values), n_places = PyTuple_GET_SIZE(place_values);
    if (heads.len % HEAD_SIZE || records.len != n * RECORD_SIZE) {
        PyErr_Format(PyExc_ValueError, "store reply has %zd heads for %zd transactions", heads.len / HEAD_SIZE,
                     records.len / RECORD_SIZE);
        goto done;
    }
    index = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(3 * n + 1));
    card_records = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n_cards + 1));
    place_records = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n_places + 1));
    cards = PyMem_Malloc(sizeof(Card) * (size_t)(n_cards + 1));
    places = PyMem_Malloc(sizeof(Place) * (size_t)(n_places + 1));
    if (!index || !card_records || !place_records || !cards || !places) {
        PyErr_NoMemory();
        goto done;
    }
    if (indexes(of[0], n, n_cards, index, "card") < 0 || indexes(of[1], n, n_places, index + n, "terminal") < 0 ||
        indexes(of[2], n, n_places, index + 2 * n, "merchant") < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        if (index[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "every transaction has a card");
            goto done;
        }
    size_t space = 64;
    for (Py_ssize_t e = 0; e < n_cards + n_places; e++) {
        const uint8_t *blob;
        Py_ssize_t length;
        PyObject *v = e < n_cards ? PyTuple_GET_ITEM(card_values, e) : PyTuple_GET_ITEM(place_values, e - n_cards);
        if (blob_of(v, &blob, &length) < 0) goto done;
        space += e < n_cards ? card_space(blob, length) : place_space(length);
    }
    arena = PyMem_Malloc(space);
    if (!arena) {
        PyErr_NoMemory();
        goto done;
    }
    char *cursor = arena;
    for (Py_ssize_t e = 0; e < n_cards + n_places; e++) {
        const uint8_t *blob;
        Py_ssize_t length;
        if (e < n_cards) {
            blob_of(PyTuple_GET_ITEM(card_values, e), &blob, &length);
            if (card_load(&cards[e], blob, length, &cursor) < 0) goto done;
            card_records[e] = cards[e].records;
        } else {
            blob_of(PyTuple_GET_ITEM(place_values, e - n_cards), &blob, &length);
            if (place_load(&places[e - n_cards], blob, length, &cursor) < 0) goto done;
            place_records[e - n_cards] = places[e - n_cards].records;
        }
    }
    values = PyByteArray_FromStringAndSize(NULL, n * L.reply_width * 8);
    previous = PyByteArray_FromStringAndSize(NULL, n * 4 * 8);
    if (!values || !previous) goto done;
    int64_t *out = (int64_t *)PyByteArray_AS_STRING(values);
    double *before = (double *)PyByteArray_AS_STRING(previous);
    const uint8_t *head = heads.buf;
    for (Py_ssize_t i = 0; i < n; i++, head += HEAD_SIZE, out += L.reply_width, before += 4) {
        Record rec;
        read_record((const uint8_t *)records.buf + i * RECORD_SIZE, &rec);
        int applied = head[0];
        Py_ssize_t length = u32_at(head + 1);
        Card *c = &cards[index[i]];
        if (card_to(c, applied ? length - RECORD_SIZE : length, &L) < 0) goto done;
        before[0] = c->has_pt ? (double)c->pt : NAN;
        before[1] = c->has_pcp ? (double)c->pcp_t : NAN;
        before[2] = c->has_pcp ? c->lat : NAN;
        before[3] = c->has_pcp ? c->lon : NAN;
        int64_t seen[2] = {
            rec.mask >> DEVICE & 1 ? has_item(&c->items[DEVICE], rec.id[DEVICE]) : -1,
            rec.mask >> TERMINAL & 1 ? has_item(&c->items[TERMINAL], rec.id[TERMINAL]) : -1,
        };
        if (card_to(c, length, &L) < 0) goto done;
        out[0] = applied;
        card_row(c, &rec, seen, &L, out + 1);
        int64_t day = floor_div(rec.t, L.size[2]);
        for (int side = 0; side < 2; side++) {
            int64_t *block = out + CARD_WIDTH + side * L.place_width;
            Py_ssize_t e = index[(side + 1) * n + i];
            if (e < 0) {
                for (int w = 0; w < L.place_width; w++) block[w] = -1;
                continue;
            }
            if (place_to(&places[e], u32_at(head + 5 + 4 * side), &L) < 0) goto done;
            place_row(&places[e], day, &L, block);
        }
    }
    card_counts = counts_list(n_cards, card_records);
    place_counts = counts_list(n_places, place_records);
    if (card_counts && place_counts) result = PyTuple_Pack(4, values, previous, card_counts, place_counts);
done:
    for (int k = 0; k < 3; k++) Py_XDECREF(of[k]);
    Py_XDECREF(card_values);
    Py_XDECREF(place_values);
    Py_XDECREF(values);
    Py_XDECREF(previous);
    Py_XDECREF(card_counts);
    Py_XDECREF(place_counts);
    PyMem_Free(index);
    PyMem_Free(card_records);
    PyMem_Free(place_records);
    PyMem_Free(cards);
    PyMem_Free(places);
    PyMem_Free(arena);
    PyBuffer_Release(&heads);
    PyBuffer_Release(&records);
    return result;
}

/* --- folding: a value's records applied to its base, written as a base (features.fold's format and order) ------- */

static void put_i32(uint8_t **p, int64_t v) { int32_t x = (int32_t)v; memcpy(*p, &x, 4); *p += 4; }
static void put_i64(uint8_t **p, int64_t v) { memcpy(*p, &v, 8); *p += 8; }
static void put_u16(uint8_t **p, Py_ssize_t v) { uint16_t x = (uint16_t)v; memcpy(*p, &x, 2); *p += 2; }
static void put_f64(uint8_t **p, double v) { memcpy(*p, &v, 8); *p += 8; }

static void sort_items(Items *it) { /* by id: insertion sort, a kind holds at most recent_items */
    for (Py_ssize_t i = 1; i < it->n; i++) {
        int64_t id = it->id[i], time = it->time[i];
        Py_ssize_t j = i;
        for (; j > 0 && it->id[j - 1] > id; j--) {
            it->id[j] = it->id[j - 1];
            it->time[j] = it->time[j - 1];
        }
        it->id[j] = id;
        it->time[j] = time;
    }
}

static PyObject *card_base_bytes(Card *c) {
    Py_ssize_t size = CARD_HEAD_SIZE + (c->ring[0].n + c->ring[1].n + c->ring[2].n) * 24 + c->frauds.n * 8;
    for (int k = 0; k < KINDS; k++) size += c->items[k].n * 16;
    for (int k = 0; k < KINDS; k++)
        if (c->items[k].n > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "a card holds more recent items than its head can count");
            return NULL;
        }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    put_u16(&p, (c->has_pt ? 1 : 0) | (c->has_pcp ? 2 : 0));
    for (int r = 0; r < 3; r++) put_u16(&p, c->ring[r].n);
    put_u16(&p, c->frauds.n);
    for (int k = 0; k < KINDS; k++) put_u16(&p, c->items[k].n);
    put_i64(&p, c->has_pt ? c->pt : 0);
    put_i64(&p, c->has_pcp ? c->pcp_t : 0);
    put_f64(&p, c->has_pcp ? c->lat : 0.0);
    put_f64(&p, c->has_pcp ? c->lon : 0.0);
    for (int r = 0; r < 3; r++)
        for (Py_ssize_t i = 0; i < c->ring[r].n; i++) {
            const Entry *e = &c->ring[r].entry[i];
            put_i32(&p, e->idx);
            put_i32(&p, e->value[0]);
            put_i64(&p, e->value[1]);
            put_i64(&p, e->value[2]);
        }
    for (Py_ssize_t i = 0; i < c->frauds.n; i++) {
        put_i32(&p, c->frauds.entry[i].idx);
        put_i32(&p, c->frauds.entry[i].value[0]);
    }
    for (int k = 0; k < KINDS; k++) {
        Items *it = &c->items[k];
        sort_items(it);
        for (Py_ssize_t i = 0; i < it->n; i++) put_i64(&p, it->id[i]);
        for (Py_ssize_t i = 0; i < it->n; i++) put_i64(&p, it->time[i]);
    }
    return out;
}

static PyObject *place_base_bytes(const Place *pl) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, PLACE_HEAD_SIZE + (pl->days.n + pl->frauds.n) * 8);
    if (!out) return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    put_u16(&p, pl->days.n);
    put_u16(&p, pl->frauds.n);
    for (int part = 0; part < 2; part++) {
        const Ring *r = part ? &pl->frauds : &pl->days;
        for (Py_ssize_t i = 0; i < r->n; i++) {
            put_i32(&p, r->entry[i].idx);
            put_i32(&p, r->entry[i].value[0]);
        }
    }
    return out;
}

PyDoc_STRVAR(fold_doc,
"fold(cards, places, layout)\n"
"--\n\n"
"Each card value and each place value folded into a base: its records applied to its base, written in\n"
"features.fold's format and order (None for a value with no records). cards / places: sequences of bytes; layout:\n"
"the integers of features.reader.layout_vector.");

static PyObject *fold_values(PyObject *self, PyObject *args) {
    PyObject *card_seq, *place_seq, *layout_seq;
    if (!PyArg_ParseTuple(args, "OOO", &card_seq, &place_seq, &layout_seq)) return NULL;
    Layout L;
    PyObject *given[2] = {NULL, NULL}, *lists[2] = {NULL, NULL}, *result = NULL;
    char *arena = NULL;
    if (parse_layout(layout_seq, &L) < 0 || !(given[0] = PySequence_Tuple(card_seq)) ||
        !(given[1] = PySequence_Tuple(place_seq)) || !(lists[0] = PyList_New(PyTuple_GET_SIZE(given[0]))) ||
        !(lists[1] = PyList_New(PyTuple_GET_SIZE(given[1]))))
        goto done;
    for (int kind = 0; kind < 2; kind++) {
        for (Py_ssize_t e = 0; e < PyTuple_GET_SIZE(given[kind]); e++) {
            const uint8_t *blob;
            Py_ssize_t length;
            if (blob_of(PyTuple_GET_ITEM(given[kind], e), &blob, &length) < 0) goto done;
            PyMem_Free(arena);
            arena = PyMem_Malloc(kind == 0 ? card_space(blob, length) : place_space(length));
            if (!arena) {
                PyErr_NoMemory();
                goto done;
            }
            char *cursor = arena;
            PyObject *base;
            if (kind == 0) {
                Card c;
                if (card_load(&c, blob, length, &cursor) < 0 || card_to(&c, length, &L) < 0) goto done;
                if (c.records == 0) base = Py_NewRef(Py_None);
                else if (!(base = card_base_bytes(&c))) goto done;
            } else {
                Place pl;
                if (place_load(&pl, blob, length, &cursor) < 0 || place_to(&pl, length, &L) < 0) goto done;
                if (pl.records == 0) base = Py_NewRef(Py_None);
                else if (!(base = place_base_bytes(&pl))) goto done;
            }
            PyList_SET_ITEM(lists[kind], e, base);
        }
    }
    result = PyTuple_Pack(2, lists[0], lists[1]);
done:
    PyMem_Free(arena);
    for (int kind = 0; kind < 2; kind++) {
        Py_XDECREF(given[kind]);
        Py_XDECREF(lists[kind]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"fold", fold_values, METH_VARARGS, fold_doc},
    {"read", read_reply, METH_VARARGS, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "features._replay",
    .m_doc = "A batch's store reply read back in C: features.blobs.replay's steps, for the whole batch in one call.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__replay(void) { return PyModule_Create(&module); }
