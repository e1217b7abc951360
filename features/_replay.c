/* features._replay: the online store's hot path in C — a batch planned, its store reply read back, values folded.
 *
 * Each function is the C twin of a Python definition, held byte for byte (or value for value) equal to it by tests;
 * the figure they serve is the in-process "features" stage of `fraudpipe bench` (one store call and the feature
 * matrix per batch), where the Python definitions cost 10 to 90 times more at a batch of 500:
 *   plan  features.plan.plan_batch: the script's request, the records and the readers' index, from Transactions
 *   read  features.reader.replay: each transaction's card advanced to its log length before it (what it read
 *         before it), then after it; its terminal and merchant to theirs; the reply row read from the states
 *   fold  features.fold.fold: each value's records applied to its base, the state written as a base again
 * The steps are those of features.memory (the twin), over the formats of features.blobs and features.plan. Python
 * keeps the names (which value is which entity); read and fold see values, indexes and the layout's integers. Every
 * sequence argument is taken as a tuple of its own before any work: no Python code runs while values are read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KINDS 4 /* terminal, merchant, country, device: the record's order */
#define TERMINAL 0
#define DEVICE 3
#define GEO 0x10
#define LABEL_TAG 0x80
#define PAYMENT_SIZE 17 /* u8 flags, i64 µs, i64 cents */
#define LABEL_SIZE 5    /* u8 tag, i32 day */
#define ITEM_SIZE 6
#define MAX_WINDOWS 8
#define CARD_WIDTH 20
#define INDEX_SIZE 20 /* i32 card, i32 terminal, i32 merchant, u32 record offset, u32 record length */

typedef struct {
    int64_t size[3], kept[3];
    int card_windows;
    int window_ring[MAX_WINDOWS];
    int64_t window_length[MAX_WINDOWS];
    int64_t card_frauds;
    int place_windows, fraud_windows;
    int64_t place_window[MAX_WINDOWS], fraud_window[MAX_WINDOWS];
    int64_t label_delay, place_kept, recent_items, day_items, square_cap;
    int place_width, reply_width;
} Layout;

/* --- an arena: every state of a call lives in it, freed at once --------------------------------------------------- */

typedef struct Block {
    struct Block *next;
    size_t used, size;
    char data[];
} Block;

typedef struct {
    Block *head;
} Arena;

static void *arena_take(Arena *a, size_t bytes) {
    bytes = (bytes + 15) & ~(size_t)15;
    if (!a->head || a->head->used + bytes > a->head->size) {
        size_t size = bytes > 65536 ? bytes : 65536;
        Block *b = PyMem_Malloc(sizeof(Block) + size);
        if (!b) {
            PyErr_NoMemory();
            return NULL;
        }
        b->next = a->head;
        b->used = 0;
        b->size = size;
        a->head = b;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += bytes;
    return p;
}

static void arena_free(Arena *a) {
    while (a->head) {
        Block *next = a->head->next;
        PyMem_Free(a->head);
        a->head = next;
    }
}

/* --- states ------------------------------------------------------------------------------------------------------ */

typedef struct {
    int64_t idx, value[3];
} Entry;

typedef struct { /* entries sorted by bucket, room for `cap` */
    Entry *entry;
    Py_ssize_t n, cap;
} Ring;

typedef struct {
    int64_t *id, *time;
    Py_ssize_t n, cap;
} Items;

typedef struct {
    const uint8_t *log;
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
    int64_t t, amount, id[KINDS];
    int geo, mask;
    double lat, lon;
} Record;

static int64_t i64_at(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static int32_t i32_at(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static double f64_at(const uint8_t *p) { double v; memcpy(&v, p, 8); return v; }
static int64_t id_at(const uint8_t *p) {
    int64_t v = 0;
    for (int b = ITEM_SIZE - 1; b >= 0; b--) v = v << 8 | p[b];
    return v;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int malformed(const char *what) {
    PyErr_Format(PyExc_ValueError, "%s", what);
    return -1;
}

/* A payment record (features.plan RECORD) at p, at most `left` bytes long; its size, or -1. */
static Py_ssize_t read_record(const uint8_t *p, Py_ssize_t left, Record *r) {
    if (left < PAYMENT_SIZE || p[0] & LABEL_TAG) return -1;
    r->mask = p[0] & 0x0F;
    r->geo = (p[0] & GEO) != 0;
    r->t = i64_at(p + 1);
    r->amount = i64_at(p + 9);
    Py_ssize_t at = PAYMENT_SIZE;
    r->lat = r->lon = 0.0;
    if (r->geo) {
        if (left < at + 16) return -1;
        r->lat = f64_at(p + at);
        r->lon = f64_at(p + at + 8);
        at += 16;
    }
    for (int k = 0; k < KINDS; k++) {
        r->id[k] = 0;
        if (r->mask >> k & 1) {
            if (left < at + ITEM_SIZE) return -1;
            r->id[k] = id_at(p + at);
            at += ITEM_SIZE;
        }
    }
    return at;
}

/* --- varints: features.blobs ------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} Reader;

static uint64_t get_u(Reader *r) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) break;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) return v;
    }
    r->bad = 1;
    return 0;
}

static int64_t get_z(Reader *r) {
    uint64_t z = get_u(r);
    return (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
}

static void put_u(uint8_t **p, uint64_t v) {
    while (v >= 0x80) {
        *(*p)++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *(*p)++ = (uint8_t)v;
}

static void put_z(uint8_t **p, int64_t v) { put_u(p, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); }

/* --- rings: features.memory._add, _prune, _sum ---------------------------------------------------------------- */

static void ring_prune(Ring *r, int64_t above) { /* keep the entries with a bucket above `above` (sorted) */
    Py_ssize_t gone = 0;
    while (gone < r->n && r->entry[gone].idx <= above) gone++;
    if (!gone) return;
    memmove(r->entry, r->entry + gone, (size_t)(r->n - gone) * sizeof(Entry));
    r->n -= gone;
}

static int ring_top(const Ring *r, int64_t *top) {
    if (r->n == 0) return 0;
    *top = r->entry[r->n - 1].idx;
    return 1;
}

/* Add `delta` to bucket `idx`: a payment ring (`advances`: its newest bucket moves up to idx, older ones fall out
 * past `kept`; a bucket at or below newest - kept is gone) or a fraud ring (kept from `limit`, its payment ring's
 * newest, when `has_limit`). Returns whether it changed; the caller leaves room for one more entry. */
static int ring_add(Ring *r, int64_t idx, int64_t kept, const int64_t delta[3], int advances, int has_limit,
                    int64_t limit) {
    int has_top = advances ? r->n > 0 : has_limit;
    int64_t top = advances ? (r->n ? r->entry[r->n - 1].idx : 0) : limit;
    if (has_top && idx <= top - kept) return 0;
    Py_ssize_t i = r->n; /* entries are sorted and most records come in time order: look from the newest */
    while (i > 0 && r->entry[i - 1].idx >= idx) i--;
    if (i < r->n && r->entry[i].idx == idx) {
        for (int d = 0; d < 3; d++) r->entry[i].value[d] += delta[d];
    } else {
        memmove(&r->entry[i + 1], &r->entry[i], (size_t)(r->n - i) * sizeof(Entry));
        r->entry[i].idx = idx;
        for (int d = 0; d < 3; d++) r->entry[i].value[d] = delta[d];
        r->n++;
    }
    if (advances && (!has_top || idx > top)) ring_prune(r, idx - kept);
    return 1;
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

/* A ring of the base (features.blobs: uvarint n, zvarint newest, entries oldest first) with room for `room` more
 * entries; `values` are the entry's values, `zigzag` a bit per value. */
static int load_ring(Ring *r, Reader *in, Arena *a, Py_ssize_t room, int values, int zigzag) {
    uint64_t n = get_u(in);
    if (in->bad || n > (uint64_t)(in->end - in->p)) return malformed("a base is malformed");
    r->n = (Py_ssize_t)n;
    r->cap = r->n + room + 1;
    r->entry = arena_take(a, (size_t)r->cap * sizeof(Entry));
    if (!r->entry) return -1;
    if (!n) return 0;
    int64_t top = get_z(in);
    for (Py_ssize_t i = 0; i < r->n; i++) {
        Entry *e = &r->entry[i];
        e->idx = top - (int64_t)get_u(in);
        for (int d = 0; d < 3; d++)
            e->value[d] = d >= values ? 0 : zigzag >> d & 1 ? get_z(in) : (int64_t)get_u(in);
    }
    return in->bad ? malformed("a base is malformed") : 0;
}

static int empty_ring(Ring *r, Arena *a, Py_ssize_t room) {
    r->n = 0;
    r->cap = room + 1;
    r->entry = arena_take(a, (size_t)r->cap * sizeof(Entry));
    return r->entry ? 0 : -1;
}

/* --- loading: features.blobs.card_base, place_base --------------------------------------------------------------- */

/* Records a value of `length` bytes can hold at most (the smallest record is 4 bytes). */
static Py_ssize_t room_for(Py_ssize_t length) { return length / 4 + 1; }

static int card_load(Card *c, const uint8_t *base, Py_ssize_t base_len, const uint8_t *log, Py_ssize_t log_len,
                     Arena *a) {
    memset(c, 0, sizeof(*c));
    c->log = log;
    c->length = log ? log_len : 0;
    if (log) { /* its head (features.blobs.LOG_HEAD: u32 fold generation), then records */
        if (log_len < 4) return malformed("a card log is shorter than its head");
        c->at = 4;
    }
    Py_ssize_t room = room_for(c->length);
    Reader in = {base, base + (base ? base_len : 0), 0};
    int flags = 0;
    if (base && base_len) {
        flags = *in.p++;
        if (flags & 1) {
            if (in.end - in.p < 8) return malformed("a card base is malformed");
            c->pt = i64_at(in.p);
            in.p += 8;
            c->has_pt = 1;
        }
        if (flags & 2) {
            int64_t before = (int64_t)get_u(&in);
            if (in.bad || in.end - in.p < 16) return malformed("a card base is malformed");
            c->pcp_t = c->pt - before;
            c->lat = f64_at(in.p);
            c->lon = f64_at(in.p + 8);
            in.p += 16;
            c->has_pcp = 1;
        }
    }
    for (int r = 0; r < 3; r++)
        if ((base_len ? load_ring(&c->ring[r], &in, a, room, 3, 2) : empty_ring(&c->ring[r], a, room)) < 0) return -1;
    if ((base_len ? load_ring(&c->frauds, &in, a, room, 1, 1) : empty_ring(&c->frauds, a, room)) < 0) return -1;
    for (int k = 0; k < KINDS; k++) {
        Items *it = &c->items[k];
        uint64_t n = base_len ? get_u(&in) : 0;
        if (in.bad || n > (uint64_t)(in.end - in.p)) return malformed("a card base is malformed");
        it->n = (Py_ssize_t)n;
        it->cap = it->n + room + 1;
        it->id = arena_take(a, (size_t)it->cap * 8);
        it->time = arena_take(a, (size_t)it->cap * 8);
        if (!it->id || !it->time) return -1;
        int64_t previous = c->pt;
        for (Py_ssize_t i = 0; i < it->n; i++) {
            if (in.end - in.p < ITEM_SIZE) return malformed("a card base is malformed");
            it->id[i] = id_at(in.p);
            in.p += ITEM_SIZE;
            previous = it->time[i] = previous - (int64_t)get_u(&in);
        }
    }
    if (in.bad || in.p != in.end) return malformed("a card base is malformed");
    return 0;
}

static int place_load(Place *p, const uint8_t *blob, Py_ssize_t length, Arena *a) {
    memset(p, 0, sizeof(*p));
    p->blob = blob;
    p->length = blob ? length : 0;
    Py_ssize_t room = room_for(p->length);
    if (!p->length) return (empty_ring(&p->days, a, room) < 0 || empty_ring(&p->frauds, a, room) < 0) ? -1 : 0;
    Reader in = {blob, blob + length, 0};
    if (load_ring(&p->days, &in, a, room, 1, 0) < 0 || load_ring(&p->frauds, &in, a, room, 1, 1) < 0) return -1;
    p->at = in.p - blob;
    return 0;
}

/* --- the steps: features.memory.apply_card, apply_place, apply_fraud --------------------------------------------- */

static void forget_before(Items *it, int64_t since) { /* keep the items last used after `since` */
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < it->n; i++)
        if (it->time[i] > since) {
            it->id[kept] = it->id[i];
            it->time[kept++] = it->time[i];
        }
    it->n = kept;
}

static void card_apply(Card *c, const Record *rec, const Layout *L) {
    int64_t capped = rec->amount < 0 ? -rec->amount : rec->amount;
    if (capped > L->square_cap) capped = L->square_cap;
    int64_t delta[3] = {1, rec->amount, capped * capped};
    for (int r = 0; r < 3; r++) ring_add(&c->ring[r], floor_div(rec->t, L->size[r]), L->kept[r], delta, 1, 0, 0);
    int64_t top;
    if (c->frauds.n && ring_top(&c->ring[2], &top)) ring_prune(&c->frauds, top - L->kept[2]);
    if (c->has_pt)
        for (int k = 0; k < KINDS; k++)
            if (L->day_items >> k & 1) forget_before(&c->items[k], c->pt - L->size[2]);
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

static void fraud_apply(Ring *frauds, const Ring *payments, int64_t day, int64_t delta, int64_t kept) {
    int64_t top = 0, one[3] = {delta, 0, 0};
    int has = ring_top(payments, &top);
    ring_add(frauds, day, kept, one, 0, has, top);
}

/* Apply the card's records up to byte `length` of its log. */
static int card_to(Card *c, Py_ssize_t length, const Layout *L) {
    if (length > c->length) return malformed("store reply names a card length past its value");
    while (c->at < length) {
        const uint8_t *p = c->log + c->at;
        Py_ssize_t left = c->length - c->at;
        if (p[0] & LABEL_TAG) {
            if (left < LABEL_SIZE) return malformed("a card log ends inside a record");
            fraud_apply(&c->frauds, &c->ring[2], i32_at(p + 1), p[0] & 1 ? -1 : 1, L->kept[2]);
            c->at += LABEL_SIZE;
        } else {
            Record rec;
            Py_ssize_t size = read_record(p, left, &rec);
            if (size < 0) return malformed("a card log ends inside a record");
            card_apply(c, &rec, L);
            c->at += size;
        }
        c->records++;
    }
    if (c->at != length) return malformed("store reply names a length inside a record");
    return 0;
}

static int place_to(Place *p, Py_ssize_t length, const Layout *L) {
    if (length > p->length) return malformed("store reply names a place length past its value");
    static const int64_t one[3] = {1, 0, 0};
    int64_t top;
    while (p->at < length) {
        if (p->at + 4 > p->length) return malformed("a terminal or merchant value ends inside a record");
        int32_t day = i32_at(p->blob + p->at);
        if (day >= 0) {
            ring_add(&p->days, day, L->place_kept, one, 1, 0, 0);
            if (p->frauds.n && ring_top(&p->days, &top)) ring_prune(&p->frauds, top - L->place_kept);
            p->at += 4;
        } else {
            if (p->at + 5 > p->length) return malformed("a terminal or merchant value ends inside a record");
            fraud_apply(&p->frauds, &p->days, ~day, (int8_t)p->blob[p->at + 4], L->place_kept);
            p->at += 5;
        }
        p->records++;
    }
    if (p->at != length) return malformed("store reply names a length inside a record");
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

/* --- arguments --------------------------------------------------------------------------------------------------- */

static int parse_layout(PyObject *seq, Layout *L) {
    int64_t v[64];
    PyObject *tuple = PySequence_Tuple(seq);
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
    TAKE(L->day_items);
    TAKE(L->square_cap);
#undef TAKE
#undef TAKE_IN
    if (at != n || L->size[0] <= 0 || L->size[1] <= 0 || L->size[2] <= 0 || L->recent_items < 1) goto bad;
    if (1 + 3 * L->card_windows + 7 != CARD_WIDTH) goto bad; /* applied, windows, day kept, frauds, 5 items */
    L->place_width = L->place_windows + 2 * L->fraud_windows;
    L->reply_width = CARD_WIDTH + 2 * L->place_width;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "layout does not describe the store's reply");
    return -1;
}

/* A value's bytes, NULL for None or empty (an entity with no value). */
static int blob_of(PyObject *v, const uint8_t **blob, Py_ssize_t *length) {
    if (v != Py_None && !PyBytes_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "entity values must be bytes or None");
        return -1;
    }
    *length = v == Py_None ? 0 : PyBytes_GET_SIZE(v);
    *blob = *length ? (const uint8_t *)PyBytes_AS_STRING(v) : NULL;
    return 0;
}

/* Cards (bases and logs) and places loaded from tuples of values. */
static int load_all(PyObject *bases, PyObject *logs, PyObject *places, Card **cards, Place **spots, Arena *a) {
    Py_ssize_t n_cards = PyTuple_GET_SIZE(bases), n_places = PyTuple_GET_SIZE(places);
    if (PyTuple_GET_SIZE(logs) != n_cards) return malformed("as many card logs as card bases are needed");
    *cards = arena_take(a, sizeof(Card) * (size_t)(n_cards + 1));
    *spots = arena_take(a, sizeof(Place) * (size_t)(n_places + 1));
    if (!*cards || !*spots) return -1;
    for (Py_ssize_t e = 0; e < n_cards; e++) {
        const uint8_t *base, *log;
        Py_ssize_t base_len, log_len;
        if (blob_of(PyTuple_GET_ITEM(bases, e), &base, &base_len) < 0 ||
            blob_of(PyTuple_GET_ITEM(logs, e), &log, &log_len) < 0 ||
            card_load(&(*cards)[e], base, base_len, log, log_len, a) < 0)
            return -1;
    }
    for (Py_ssize_t e = 0; e < n_places; e++) {
        const uint8_t *blob;
        Py_ssize_t length;
        if (blob_of(PyTuple_GET_ITEM(places, e), &blob, &length) < 0 || place_load(&(*spots)[e], blob, length, a) < 0)
            return -1;
    }
    return 0;
}

static PyObject *counts_list(Py_ssize_t n, const void *items, size_t stride, size_t offset) {
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t records;
        memcpy(&records, (const char *)items + stride * (size_t)i + offset, sizeof(records));
        PyObject *v = PyLong_FromSsize_t(records);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* --- read -------------------------------------------------------------------------------------------------------- */

PyDoc_STRVAR(read_doc,
"read(answer, records, index, card_bases, card_logs, places, layout)\n"
"--\n\n"
"features.reader.replay in C: a batch's reply values (n x reply width int64) and previous (n x 4 float64) as\n"
"bytearrays, and the records each card's log and each place's value holds. answer: the script's (applied flags,\n"
"lengths before the batch: features.reader.heads); records and index: the batch's Planned; card_bases, card_logs,\n"
"places: the values (bytes, or None for none); layout: the integers of features.reader.layout_vector.");

static PyObject *read_reply(PyObject *self, PyObject *args) {
    Py_buffer answer, records, index;
    PyObject *base_seq, *log_seq, *place_seq, *layout_seq;
    if (!PyArg_ParseTuple(args, "y*y*y*OOOO", &answer, &records, &index, &base_seq, &log_seq, &place_seq,
                          &layout_seq))
        return NULL;
    PyObject *result = NULL, *values = NULL, *previous = NULL, *card_counts = NULL, *place_counts = NULL;
    PyObject *bases = NULL, *logs = NULL, *places = NULL;
    Arena arena = {NULL};
    Card *cards;
    Place *spots;
    Layout L;
    Py_ssize_t n = index.len / INDEX_SIZE;
    if (parse_layout(layout_seq, &L) < 0 || !(bases = PySequence_Tuple(base_seq)) ||
        !(logs = PySequence_Tuple(log_seq)) || !(places = PySequence_Tuple(place_seq)))
        goto done;
    Py_ssize_t n_cards = PyTuple_GET_SIZE(bases), n_places = PyTuple_GET_SIZE(places);
    if (index.len % INDEX_SIZE || answer.len != n + 4 * (n_cards + n_places)) {
        PyErr_Format(PyExc_ValueError, "store reply of %zd bytes for %zd transactions, %zd cards, %zd places",
                     answer.len, n, n_cards, n_places);
        goto done;
    }
    if (load_all(bases, logs, places, &cards, &spots, &arena) < 0) goto done;
    int64_t *running = arena_take(&arena, sizeof(int64_t) * (size_t)(n_cards + n_places + 1));
    if (!running) goto done;
    const uint8_t *flags = answer.buf;
    for (Py_ssize_t e = 0; e < n_cards + n_places; e++) running[e] = u32_at(flags + n + 4 * e);
    values = PyByteArray_FromStringAndSize(NULL, n * L.reply_width * 8);
    previous = PyByteArray_FromStringAndSize(NULL, n * 4 * 8);
    if (!values || !previous) goto done;
    int64_t *out = (int64_t *)PyByteArray_AS_STRING(values);
    double *before = (double *)PyByteArray_AS_STRING(previous);
    const uint8_t *at = index.buf;
    for (Py_ssize_t i = 0; i < n; i++, at += INDEX_SIZE, out += L.reply_width, before += 4) {
        int32_t card_no = i32_at(at), number[2] = {i32_at(at + 4), i32_at(at + 8)};
        uint32_t offset = u32_at(at + 12), size = u32_at(at + 16);
        if (card_no < 0 || card_no >= n_cards || number[0] < -1 || number[1] < -1 || number[0] >= n_places ||
            number[1] >= n_places ||
            (Py_ssize_t)offset + size > records.len) {
            PyErr_SetString(PyExc_ValueError, "a batch index points outside its entities or records");
            goto done;
        }
        Record rec;
        if (read_record((const uint8_t *)records.buf + offset, size, &rec) != (Py_ssize_t)size) {
            PyErr_SetString(PyExc_ValueError, "a transaction's record is malformed");
            goto done;
        }
        int applied = flags[i] != 0;
        if (applied) {
            running[card_no] += size;
            for (int side = 0; side < 2; side++)
                if (number[side] >= 0) running[n_cards + number[side]] += 4;
        }
        Py_ssize_t length = running[card_no];
        Card *c = &cards[card_no];
        if (card_to(c, applied ? length - (Py_ssize_t)size : length, &L) < 0) goto done;
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
            if (number[side] < 0) {
                for (int w = 0; w < L.place_width; w++) block[w] = -1;
                continue;
            }
            if (place_to(&spots[number[side]], running[n_cards + number[side]], &L) < 0) goto done;
            place_row(&spots[number[side]], day, &L, block);
        }
    }
    for (Py_ssize_t e = 0; e < n_cards; e++)
        if (card_to(&cards[e], cards[e].length, &L) < 0) goto done;
    for (Py_ssize_t e = 0; e < n_places; e++)
        if (place_to(&spots[e], spots[e].length, &L) < 0) goto done;
    card_counts = counts_list(n_cards, cards, sizeof(Card), offsetof(Card, records));
    place_counts = counts_list(n_places, spots, sizeof(Place), offsetof(Place, records));
    if (card_counts && place_counts) result = PyTuple_Pack(4, values, previous, card_counts, place_counts);
done:
    Py_XDECREF(bases);
    Py_XDECREF(logs);
    Py_XDECREF(places);
    Py_XDECREF(values);
    Py_XDECREF(previous);
    Py_XDECREF(card_counts);
    Py_XDECREF(place_counts);
    arena_free(&arena);
    PyBuffer_Release(&answer);
    PyBuffer_Release(&records);
    PyBuffer_Release(&index);
    return result;
}

/* --- fold: features.blobs.encode_card, encode_place ------------------------------------------------------------- */

static void put_i64(uint8_t **p, int64_t v) { memcpy(*p, &v, 8); *p += 8; }
static void put_f64(uint8_t **p, double v) { memcpy(*p, &v, 8); *p += 8; }

static void put_ring(uint8_t **p, const Ring *r, int values, int zigzag) {
    put_u(p, (uint64_t)r->n);
    if (!r->n) return;
    int64_t top = r->entry[r->n - 1].idx;
    put_z(p, top);
    for (Py_ssize_t i = 0; i < r->n; i++) {
        put_u(p, (uint64_t)(top - r->entry[i].idx));
        for (int d = 0; d < values; d++) {
            if (zigzag >> d & 1) put_z(p, r->entry[i].value[d]);
            else put_u(p, (uint64_t)r->entry[i].value[d]);
        }
    }
}

static void sort_items(Items *it) { /* most recent first, ties by id: insertion sort, a kind holds few */
    for (Py_ssize_t i = 1; i < it->n; i++) {
        int64_t id = it->id[i], time = it->time[i];
        Py_ssize_t j = i;
        for (; j > 0 && (it->time[j - 1] < time || (it->time[j - 1] == time && it->id[j - 1] > id)); j--) {
            it->id[j] = it->id[j - 1];
            it->time[j] = it->time[j - 1];
        }
        it->id[j] = id;
        it->time[j] = time;
    }
}

static PyObject *card_base_bytes(Card *c, Arena *a) {
    Py_ssize_t bound = 64 + 4 * 20;
    for (int r = 0; r < 3; r++) bound += c->ring[r].n * 40;
    bound += c->frauds.n * 20;
    for (int k = 0; k < KINDS; k++) bound += 10 + c->items[k].n * (ITEM_SIZE + 10);
    uint8_t *start = arena_take(a, (size_t)bound), *p = start;
    if (!p) return NULL;
    *p++ = (uint8_t)(c->has_pt | c->has_pcp << 1);
    if (c->has_pt) put_i64(&p, c->pt);
    if (c->has_pcp) {
        put_u(&p, (uint64_t)(c->pt - c->pcp_t));
        put_f64(&p, c->lat);
        put_f64(&p, c->lon);
    }
    for (int r = 0; r < 3; r++) put_ring(&p, &c->ring[r], 3, 2);
    put_ring(&p, &c->frauds, 1, 1);
    for (int k = 0; k < KINDS; k++) {
        Items *it = &c->items[k];
        sort_items(it);
        put_u(&p, (uint64_t)it->n);
        int64_t previous = c->pt;
        for (Py_ssize_t i = 0; i < it->n; i++) {
            for (int b = 0; b < ITEM_SIZE; b++) *p++ = (uint8_t)(it->id[i] >> (8 * b));
            put_u(&p, (uint64_t)(previous - it->time[i]));
            previous = it->time[i];
        }
    }
    return PyBytes_FromStringAndSize((const char *)start, p - start);
}

static PyObject *place_base_bytes(const Place *pl, Arena *a) {
    uint8_t *start = arena_take(a, (size_t)(48 + (pl->days.n + pl->frauds.n) * 20)), *p = start;
    if (!p) return NULL;
    put_ring(&p, &pl->days, 1, 0);
    put_ring(&p, &pl->frauds, 1, 1);
    return PyBytes_FromStringAndSize((const char *)start, p - start);
}

PyDoc_STRVAR(fold_doc,
"fold(card_bases, card_logs, places, layout)\n"
"--\n\n"
"features.fold.fold in C: each card (base and log) and each place value folded into a base, in features.blobs'\n"
"canonical bytes (None for one that holds no records). Values are bytes or None; layout: the integers of\n"
"features.reader.layout_vector.");

static PyObject *fold_values(PyObject *self, PyObject *args) {
    PyObject *base_seq, *log_seq, *place_seq, *layout_seq;
    if (!PyArg_ParseTuple(args, "OOOO", &base_seq, &log_seq, &place_seq, &layout_seq)) return NULL;
    Layout L;
    PyObject *bases = NULL, *logs = NULL, *places = NULL, *lists[2] = {NULL, NULL}, *result = NULL;
    Arena arena = {NULL};
    Card *cards;
    Place *spots;
    if (parse_layout(layout_seq, &L) < 0 || !(bases = PySequence_Tuple(base_seq)) ||
        !(logs = PySequence_Tuple(log_seq)) || !(places = PySequence_Tuple(place_seq)) ||
        load_all(bases, logs, places, &cards, &spots, &arena) < 0 ||
        !(lists[0] = PyList_New(PyTuple_GET_SIZE(bases))) || !(lists[1] = PyList_New(PyTuple_GET_SIZE(places))))
        goto done;
    for (Py_ssize_t e = 0; e < PyTuple_GET_SIZE(bases); e++) {
        Card *c = &cards[e];
        PyObject *base;
        if (card_to(c, c->length, &L) < 0) goto done;
        if (c->records == 0) base = Py_NewRef(Py_None);
        else if (!(base = card_base_bytes(c, &arena))) goto done;
        PyList_SET_ITEM(lists[0], e, base);
    }
    for (Py_ssize_t e = 0; e < PyTuple_GET_SIZE(places); e++) {
        Place *pl = &spots[e];
        PyObject *base;
        if (place_to(pl, pl->length, &L) < 0) goto done;
        if (pl->records == 0) base = Py_NewRef(Py_None);
        else if (!(base = place_base_bytes(pl, &arena))) goto done;
        PyList_SET_ITEM(lists[1], e, base);
    }
    result = PyTuple_Pack(2, lists[0], lists[1]);
done:
    arena_free(&arena);
    Py_XDECREF(bases);
    Py_XDECREF(logs);
    Py_XDECREF(places);
    Py_XDECREF(lists[0]);
    Py_XDECREF(lists[1]);
    return result;
}

/* --- plan: features.plan.plan_batch ----------------------------------------------------------------------------- */

typedef struct {
    uint8_t *data;
    Py_ssize_t len, cap;
} Buffer;

static uint8_t *buffer_room(Buffer *b, Py_ssize_t more) {
    if (b->len + more > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + more) cap *= 2;
        uint8_t *data = PyMem_Realloc(b->data, (size_t)cap);
        if (!data) {
            PyErr_NoMemory();
            return NULL;
        }
        b->data = data;
        b->cap = cap;
    }
    return b->data + b->len;
}

static PyObject *ATTR[11];
static const char *ATTR_NAMES[11] = {"txn_id", "card_token", "terminal_id", "merchant_id", "country", "device_id",
                                     "event_time", "amount", "channel", "lat", "lon"};
enum { A_TXN, A_CARD, A_TERMINAL, A_MERCHANT, A_COUNTRY, A_DEVICE, A_TIME, A_AMOUNT, A_CHANNEL, A_LAT, A_LON };
static PyObject *CARD_PRESENT, *UTCOFFSET, *ZONEINFO_UTC, *CHANNELS[4];

/* A transaction's attribute: from its instance dict when it has one (pydantic models keep fields there: one dict
 * lookup with an interned, pre-hashed name), else by getattr. New reference, NULL with an exception set. */
static PyObject *field_of(PyObject *txn, PyObject *dict, int a) {
    if (dict) {
        PyObject *v = PyDict_GetItemWithError(dict, ATTR[a]);
        if (v) return Py_NewRef(v);
        if (PyErr_Occurred()) return NULL;
    }
    return PyObject_GetAttr(txn, ATTR[a]);
}

/* The instance dict of `txn` (new reference), or NULL (no error) when it has none. */
static PyObject *dict_of(PyObject *txn) {
    PyObject *dict = PyObject_GenericGetDict(txn, NULL);
    if (!dict || !PyDict_CheckExact(dict)) {
        PyErr_Clear();
        Py_XDECREF(dict);
        return NULL;
    }
    return dict;
}

static int64_t days_from_civil(int64_t y, int m, int d) { /* days since 1970-01-01 of a proleptic Gregorian date */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* An aware datetime as µs since the epoch (fraudpipe.clock.micros_of). */
static int micros_of(PyObject *moment, int64_t *out) {
    if (!PyDateTime_Check(moment)) {
        PyErr_SetString(PyExc_TypeError, "event_time must be a datetime");
        return -1;
    }
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(moment);
    if (tz == Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't subtract offset-naive and offset-aware datetimes");
        return -1;
    }
    int64_t offset = 0;
    if (tz != PyDateTime_TimeZone_UTC && tz != ZONEINFO_UTC) {
        PyObject *delta = PyObject_CallMethodNoArgs(moment, UTCOFFSET);
        if (!delta) return -1;
        if (!PyDelta_Check(delta)) {
            Py_DECREF(delta);
            PyErr_SetString(PyExc_TypeError, "utcoffset() must be a timedelta");
            return -1;
        }
        offset = ((int64_t)PyDateTime_DELTA_GET_DAYS(delta) * 86400 + PyDateTime_DELTA_GET_SECONDS(delta)) * 1000000 +
                 PyDateTime_DELTA_GET_MICROSECONDS(delta);
        Py_DECREF(delta);
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(moment), PyDateTime_GET_MONTH(moment),
                                   PyDateTime_GET_DAY(moment));
    int64_t seconds = days * 86400 + PyDateTime_DATE_GET_HOUR(moment) * 3600 +
                      PyDateTime_DATE_GET_MINUTE(moment) * 60 + PyDateTime_DATE_GET_SECOND(moment);
    *out = seconds * 1000000 + PyDateTime_DATE_GET_MICROSECOND(moment) - offset;
    return 0;
}

/* A text attribute's UTF-8 (length 0: None or ""), at most 255 bytes. */
static int text_of(PyObject *v, const char *what, int required, const char **text, Py_ssize_t *size) {
    *text = "";
    *size = 0;
    if (v == Py_None && !required) return 0;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str", what);
        return -1;
    }
    *text = PyUnicode_AsUTF8AndSize(v, size);
    if (!*text) return -1;
    if (*size > 255) {
        PyErr_Format(PyExc_ValueError, "%s longer than 255 bytes", what);
        return -1;
    }
    return 0;
}

/* The 48-bit id of an item name, through the cache `items` (name -> id; emptied past 65,536 names). */
static int item_of(PyObject *items, PyObject *hash, PyObject *name, int64_t *out) {
    PyObject *v = PyDict_GetItemWithError(items, name);
    if (!v) {
        if (PyErr_Occurred()) return -1;
        if (PyDict_GET_SIZE(items) >= 65536) PyDict_Clear(items);
        v = PyObject_CallOneArg(hash, name);
        if (!v) return -1;
        int failed = PyDict_SetItem(items, name, v);
        Py_DECREF(v);
        if (failed < 0) return -1;
    }
    unsigned long long id = PyLong_AsUnsignedLongLong(v);
    if (id == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (int64_t)(id & 0xFFFFFFFFFFFFULL);
    return 0;
}

/* The entity number of `name` in `numbers` (added, with `label` in `names`, when new); -1 for None or "". */
static int number_of(PyObject *numbers, PyObject *names, PyObject *name, const char *kind, int32_t *out) {
    *out = -1;
    if (name == Py_None || PyUnicode_GET_LENGTH(name) == 0) return 0;
    PyObject *v = PyDict_GetItemWithError(numbers, name);
    if (v) {
        *out = (int32_t)PyLong_AsLong(v);
        return 0;
    }
    if (PyErr_Occurred()) return -1;
    PyObject *label = kind ? PyUnicode_FromFormat("%s:%U", kind, name) : Py_NewRef(name);
    PyObject *number = PyLong_FromSsize_t(PyList_GET_SIZE(names));
    int failed = !label || !number || PyList_Append(names, label) < 0 || PyDict_SetItem(numbers, name, number) < 0;
    if (!failed) *out = (int32_t)PyLong_AsLong(number);
    Py_XDECREF(label);
    Py_XDECREF(number);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(plan_doc,
"plan(txns, items, item_id, day_us)\n"
"--\n\n"
"features.plan.plan_batch in C: (request, records, index, cards, places) of a batch of Transactions. items: the\n"
"cache of item ids by name; item_id: the function computing one; day_us: a day in microseconds.");

static int put_text(Buffer *b, PyObject *text) { /* u8 length and UTF-8 of a str already checked by text_of */
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (!utf8) return -1;
    if (size > 255) {
        PyErr_SetString(PyExc_ValueError, "a card token or place name longer than 255 bytes");
        return -1;
    }
    uint8_t *q = buffer_room(b, 1 + size);
    if (!q) return -1;
    *q = (uint8_t)size;
    memcpy(q + 1, utf8, (size_t)size);
    b->len += 1 + size;
    return 0;
}

static int put_u32(Buffer *b, uint32_t v) {
    uint8_t *q = buffer_room(b, 4);
    if (!q) return -1;
    memcpy(q, &v, 4);
    b->len += 4;
    return 0;
}

/* Transactions' numbers grouped by entity (`of`: each transaction's entity, -1 none), batch order within each. */
static int group(const int32_t *of, Py_ssize_t n, int stride, Py_ssize_t entities, Arena *a, Py_ssize_t **start,
                 uint32_t **members) {
    *start = arena_take(a, sizeof(Py_ssize_t) * (size_t)(entities + 2));
    *members = arena_take(a, sizeof(uint32_t) * (size_t)(n * stride + 1));
    if (!*start || !*members) return -1;
    memset(*start, 0, sizeof(Py_ssize_t) * (size_t)(entities + 2));
    for (Py_ssize_t i = 0; i < n * stride; i++)
        if (of[i] >= 0) (*start)[of[i] + 2]++;
    for (Py_ssize_t e = 0; e < entities; e++) (*start)[e + 2] += (*start)[e + 1];
    for (Py_ssize_t i = 0; i < n * stride; i++) /* start[e + 1]: where entity e's next member goes */
        if (of[i] >= 0) (*members)[(*start)[of[i] + 1]++] = (uint32_t)(i / stride);
    return 0; /* entity e's members: members[start[e] .. start[e + 1]) */
}

static PyObject *plan_batch(PyObject *self, PyObject *args) {
    PyObject *txn_seq, *items, *hash;
    long long day_us;
    if (!PyArg_ParseTuple(args, "OO!OL", &txn_seq, &PyDict_Type, &items, &hash, &day_us)) return NULL;
    if (day_us <= 0) {
        PyErr_SetString(PyExc_ValueError, "day_us must be positive");
        return NULL;
    }
    PyObject *txns = PySequence_Fast(txn_seq, "txns must be a sequence");
    if (!txns) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(txns);
    Buffer request = {NULL, 0, 0}, records = {NULL, 0, 0}, index = {NULL, 0, 0};
    Arena arena = {NULL};
    PyObject *result = NULL, *cards = PyList_New(0), *places = PyList_New(0), *ids = PyList_New(n);
    PyObject *card_numbers = PyDict_New(), *terminal_numbers = PyDict_New(), *merchant_numbers = PyDict_New();
    PyObject *value[11] = {NULL};
    int32_t *card_of = arena_take(&arena, sizeof(int32_t) * (size_t)(n + 1));
    int32_t *place_of = arena_take(&arena, sizeof(int32_t) * (size_t)(2 * n + 1)), *days = NULL;
    days = arena_take(&arena, sizeof(int32_t) * (size_t)(n + 1));
    if (!cards || !places || !ids || !card_numbers || !terminal_numbers || !merchant_numbers || !card_of ||
        !place_of || !days || !buffer_room(&index, n * INDEX_SIZE + 1))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *txn = PySequence_Fast_GET_ITEM(txns, i), *dict = dict_of(txn);
        for (int a = 0; a < 11; a++) {
            Py_CLEAR(value[a]);
            if (!(value[a] = field_of(txn, dict, a))) {
                Py_XDECREF(dict);
                goto done;
            }
        }
        Py_XDECREF(dict);
        const char *text[4];
        Py_ssize_t size[4];
        if (text_of(value[A_TXN], "txn_id", 1, &text[0], &size[0]) < 0 ||
            text_of(value[A_CARD], "card_token", 1, &text[1], &size[1]) < 0 ||
            text_of(value[A_TERMINAL], "terminal_id", 0, &text[2], &size[2]) < 0 ||
            text_of(value[A_MERCHANT], "merchant_id", 0, &text[3], &size[3]) < 0)
            goto done;
        PyList_SET_ITEM(ids, i, Py_NewRef(value[A_TXN]));
        int64_t t;
        if (micros_of(value[A_TIME], &t) < 0) goto done;
        if (t < 0) {
            PyErr_SetString(PyExc_ValueError, "event times before 1970 are not supported by the online store");
            goto done;
        }
        double amount = PyFloat_AsDouble(value[A_AMOUNT]);
        if (amount == -1.0 && PyErr_Occurred()) goto done;
        double whole = floor(fabs(amount) * 100 + 0.5);
        if (!isfinite(whole) || whole >= 9.2e18) {
            PyErr_SetString(PyExc_ValueError, "amount out of range");
            goto done;
        }
        int64_t cents = (int64_t)whole * (amount >= 0 ? 1 : -1);
        int geo = 0;
        double lat = 0, lon = 0;
        if (value[A_CHANNEL] != Py_None && value[A_LAT] != Py_None && value[A_LON] != Py_None) {
            int present = PyObject_RichCompareBool(value[A_CHANNEL], CARD_PRESENT, Py_EQ);
            if (present < 0) goto done;
            if (present) {
                geo = 1;
                lat = PyFloat_AsDouble(value[A_LAT]);
                lon = PyFloat_AsDouble(value[A_LON]);
                if (PyErr_Occurred()) goto done;
            }
        }
        uint8_t *record = buffer_room(&records, PAYMENT_SIZE + 16 + KINDS * ITEM_SIZE), *p = record + 1;
        if (!record) goto done;
        int flags = geo ? GEO : 0;
        put_i64(&p, t);
        put_i64(&p, cents);
        if (geo) {
            put_f64(&p, lat);
            put_f64(&p, lon);
        }
        for (int k = 0; k < KINDS; k++) {
            PyObject *name = value[A_TERMINAL + k];
            if (name == Py_None) continue;
            if (!PyUnicode_Check(name)) {
                PyErr_Format(PyExc_TypeError, "%s must be a str", ATTR_NAMES[A_TERMINAL + k]);
                goto done;
            }
            if (PyUnicode_GET_LENGTH(name) == 0) continue;
            int64_t id;
            if (item_of(items, hash, name, &id) < 0) goto done;
            flags |= 1 << k;
            for (int b = 0; b < ITEM_SIZE; b++) *p++ = (uint8_t)(id >> (8 * b));
        }
        record[0] = (uint8_t)flags;
        uint32_t where[2] = {(uint32_t)records.len, (uint32_t)(p - record)};
        records.len += p - record;
        days[i] = (int32_t)floor_div(t, day_us);
        if (number_of(card_numbers, cards, value[A_CARD], NULL, &card_of[i]) < 0 ||
            number_of(terminal_numbers, places, value[A_TERMINAL], "terminal", &place_of[2 * i]) < 0 ||
            number_of(merchant_numbers, places, value[A_MERCHANT], "merchant", &place_of[2 * i + 1]) < 0)
            goto done;
        uint8_t *x = index.data + i * INDEX_SIZE;
        memcpy(x, &card_of[i], 4);
        memcpy(x + 4, &place_of[2 * i], 8);
        memcpy(x + 12, where, 8);
    }
    Py_ssize_t n_cards = PyList_GET_SIZE(cards), n_places = PyList_GET_SIZE(places), *start;
    uint32_t *members;
    if (put_u32(&request, (uint32_t)n) < 0 || put_u32(&request, (uint32_t)n_cards) < 0 ||
        put_u32(&request, (uint32_t)n_places) < 0 || group(card_of, n, 1, n_cards, &arena, &start, &members) < 0)
        goto done;
    for (Py_ssize_t c = 0; c < n_cards; c++) {
        uint32_t joined = 0;
        if (put_text(&request, PyList_GET_ITEM(cards, c)) < 0 ||
            put_u32(&request, (uint32_t)(start[c + 1] - start[c])) < 0)
            goto done;
        for (Py_ssize_t m = start[c]; m < start[c + 1]; m++) {
            uint32_t i = members[m], size = u32_at(index.data + i * INDEX_SIZE + 16);
            if (put_u32(&request, i) < 0 || put_text(&request, PyList_GET_ITEM(ids, i)) < 0) goto done;
            uint8_t *q = buffer_room(&request, 5);
            if (!q) goto done;
            memcpy(q, &days[i], 4);
            q[4] = (uint8_t)size;
            request.len += 5;
            joined += size;
        }
        if (put_u32(&request, joined) < 0 || !buffer_room(&request, joined)) goto done;
        for (Py_ssize_t m = start[c]; m < start[c + 1]; m++) {
            uint32_t i = members[m], offset = u32_at(index.data + i * INDEX_SIZE + 12);
            uint32_t size = u32_at(index.data + i * INDEX_SIZE + 16);
            memcpy(request.data + request.len, records.data + offset, size);
            request.len += size;
        }
    }
    if (group(place_of, n, 2, n_places, &arena, &start, &members) < 0) goto done;
    for (Py_ssize_t e = 0; e < n_places; e++) {
        if (put_text(&request, PyList_GET_ITEM(places, e)) < 0 ||
            put_u32(&request, (uint32_t)(start[e + 1] - start[e])) < 0)
            goto done;
        for (Py_ssize_t m = start[e]; m < start[e + 1]; m++)
            if (put_u32(&request, members[m]) < 0) goto done;
        for (Py_ssize_t m = start[e]; m < start[e + 1]; m++)
            if (put_u32(&request, (uint32_t)days[members[m]]) < 0) goto done;
    }
    PyObject *request_bytes = PyBytes_FromStringAndSize((const char *)request.data, request.len);
    PyObject *record_bytes = PyBytes_FromStringAndSize((const char *)records.data, records.len);
    PyObject *index_bytes = PyBytes_FromStringAndSize((const char *)index.data, n * INDEX_SIZE);
    if (request_bytes && record_bytes && index_bytes)
        result = PyTuple_Pack(5, request_bytes, record_bytes, index_bytes, cards, places);
    Py_XDECREF(request_bytes);
    Py_XDECREF(record_bytes);
    Py_XDECREF(index_bytes);
done:
    for (int a = 0; a < 11; a++) Py_XDECREF(value[a]);
    Py_DECREF(txns);
    Py_XDECREF(cards);
    Py_XDECREF(places);
    Py_XDECREF(ids);
    Py_XDECREF(card_numbers);
    Py_XDECREF(terminal_numbers);
    Py_XDECREF(merchant_numbers);
    arena_free(&arena);
    PyMem_Free(request.data);
    PyMem_Free(records.data);
    PyMem_Free(index.data);
    return result;
}

PyDoc_STRVAR(columns_doc,
"columns(txns)\n"
"--\n\n"
"features.batch's columns of a batch of Transactions, as bytes: event times (int64 µs since the epoch), amounts\n"
"(float64), channels (int8: 0 none, 1 card_present, 2 ecommerce, 3 moto, 4 atm, 5 other), latitudes and longitudes\n"
"(float64, NaN for none).");

static PyObject *columns(PyObject *self, PyObject *txn_seq) {
    PyObject *txns = PySequence_Fast(txn_seq, "txns must be a sequence");
    if (!txns) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(txns);
    PyObject *out[5] = {PyBytes_FromStringAndSize(NULL, n * 8), PyBytes_FromStringAndSize(NULL, n * 8),
                        PyBytes_FromStringAndSize(NULL, n), PyBytes_FromStringAndSize(NULL, n * 8),
                        PyBytes_FromStringAndSize(NULL, n * 8)};
    PyObject *result = NULL, *value[1] = {NULL}; /* the current transaction's instance dict */
    if (!out[0] || !out[1] || !out[2] || !out[3] || !out[4]) goto done;
    int64_t *micros = (int64_t *)PyBytes_AS_STRING(out[0]);
    double *amount = (double *)PyBytes_AS_STRING(out[1]), *lat = (double *)PyBytes_AS_STRING(out[3]);
    double *lon = (double *)PyBytes_AS_STRING(out[4]);
    int8_t *channel = (int8_t *)PyBytes_AS_STRING(out[2]);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *txn = PySequence_Fast_GET_ITEM(txns, i), *v;
        Py_XSETREF(value[0], dict_of(txn));
        if (!(v = field_of(txn, value[0], A_TIME))) goto done;
        int failed = micros_of(v, &micros[i]);
        Py_DECREF(v);
        if (failed < 0 || !(v = field_of(txn, value[0], A_AMOUNT))) goto done;
        amount[i] = PyFloat_AsDouble(v);
        Py_DECREF(v);
        if (amount[i] == -1.0 && PyErr_Occurred()) goto done;
        if (!(v = field_of(txn, value[0], A_CHANNEL))) goto done;
        channel[i] = 0;
        if (v != Py_None) {
            channel[i] = 5;
            for (int k = 0; k < 4; k++) {
                int same = PyObject_RichCompareBool(v, CHANNELS[k], Py_EQ);
                if (same < 0) {
                    Py_DECREF(v);
                    goto done;
                }
                if (same) {
                    channel[i] = (int8_t)(k + 1);
                    break;
                }
            }
        }
        Py_DECREF(v);
        double *place[2] = {&lat[i], &lon[i]};
        for (int k = 0; k < 2; k++) {
            if (!(v = field_of(txn, value[0], A_LAT + k))) goto done;
            *place[k] = v == Py_None ? NAN : PyFloat_AsDouble(v);
            Py_DECREF(v);
            if (PyErr_Occurred()) goto done;
        }
    }
    result = PyTuple_Pack(5, out[0], out[1], out[2], out[3], out[4]);
done:
    for (int k = 0; k < 5; k++) Py_XDECREF(out[k]);
    Py_XDECREF(value[0]);
    Py_DECREF(txns);
    return result;
}

PyDoc_STRVAR(mget_doc,
"mget(prefix, cards, places)\n"
"--\n\n"
"The MGET command, packed (RESP), of a Planned batch's values: each card's base (prefix + 'card:' + token), each\n"
"card's log (prefix + 'cardlog:' + token), each place's value (prefix + name), in that order.");

static int put_bulk(Buffer *b, const char *a, Py_ssize_t na, const char *c, Py_ssize_t nc, const char *d,
                    Py_ssize_t nd) {
    uint8_t *q = buffer_room(b, 32 + na + nc + nd);
    if (!q) return -1;
    int head = snprintf((char *)q, 24, "$%zd\r\n", na + nc + nd);
    q += head;
    memcpy(q, a, (size_t)na);
    memcpy(q + na, c, (size_t)nc);
    memcpy(q + na + nc, d, (size_t)nd);
    q += na + nc + nd;
    q[0] = '\r';
    q[1] = '\n';
    b->len += head + na + nc + nd + 2;
    return 0;
}

static PyObject *mget(PyObject *self, PyObject *args) {
    const char *prefix;
    Py_ssize_t prefix_len;
    PyObject *cards, *places;
    if (!PyArg_ParseTuple(args, "s#O!O!", &prefix, &prefix_len, &PyList_Type, &cards, &PyList_Type, &places))
        return NULL;
    Py_ssize_t n_cards = PyList_GET_SIZE(cards), n_places = PyList_GET_SIZE(places);
    Buffer b = {NULL, 0, 0};
    PyObject *result = NULL;
    uint8_t *q = buffer_room(&b, 64);
    if (!q) return NULL;
    b.len = snprintf((char *)q, 64, "*%zd\r\n$4\r\nMGET\r\n", 1 + 2 * n_cards + n_places);
    for (int part = 0; part < 3; part++) {
        PyObject *names = part < 2 ? cards : places;
        const char *kind = part == 0 ? "card:" : part == 1 ? "cardlog:" : "";
        for (Py_ssize_t e = 0; e < PyList_GET_SIZE(names); e++) {
            Py_ssize_t size;
            const char *name = PyUnicode_Check(PyList_GET_ITEM(names, e)) ?
                PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(names, e), &size) : NULL;
            if (!name) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "names must be str");
                goto done;
            }
            if (put_bulk(&b, prefix, prefix_len, kind, (Py_ssize_t)strlen(kind), name, size) < 0) goto done;
        }
    }
    result = PyBytes_FromStringAndSize((const char *)b.data, b.len);
done:
    PyMem_Free(b.data);
    return result;
}

static PyMethodDef methods[] = {
    {"columns", columns, METH_O, columns_doc},
    {"fold", fold_values, METH_VARARGS, fold_doc},
    {"mget", mget, METH_VARARGS, mget_doc},
    {"plan", plan_batch, METH_VARARGS, plan_doc},
    {"read", read_reply, METH_VARARGS, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "features._replay",
    .m_doc = "The online store's hot path in C: a batch planned, its store reply read back, values folded.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__replay(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    for (int a = 0; a < 11; a++)
        if (!(ATTR[a] = PyUnicode_InternFromString(ATTR_NAMES[a]))) return NULL;
    if (!(CARD_PRESENT = PyUnicode_InternFromString("card_present")) ||
        !(UTCOFFSET = PyUnicode_InternFromString("utcoffset")))
        return NULL;
    static const char *channels[4] = {"card_present", "ecommerce", "moto", "atm"};
    for (int k = 0; k < 4; k++)
        if (!(CHANNELS[k] = PyUnicode_InternFromString(channels[k]))) return NULL;
    PyObject *zoneinfo = PyImport_ImportModule("zoneinfo"); /* ZoneInfo("UTC") is a cached singleton: no offset */
    if (zoneinfo) {
        ZONEINFO_UTC = PyObject_CallMethod(zoneinfo, "ZoneInfo", "s", "UTC");
        Py_DECREF(zoneinfo);
    }
    if (!ZONEINFO_UTC) PyErr_Clear();
    return PyModule_Create(&module);
}
