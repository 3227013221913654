/* Criteo converter kernels, plain C99, built on first use by recsys/data/native.py and called
 * through ctypes from recsys/data/fast_parse.py (which documents each function's contract).
 *
 * Why C and not numba: numba's import plus loading the cached machine code costs every
 * process ~0.45 s before the first row, a third of the wall time of a 1M-row conversion.
 * A shared library loads in ~1 ms.  Every function here releases the GIL (ctypes does it
 * for every foreign call), so chunks can also be scanned by threads.
 *
 * Keys must equal, bit for bit, the ones the pyarrow engine computes in raw_formats.py:
 *   categorical value b[0..L):  mix64(sum_i (b[i] + 1) * P^i  xor  L * C_LEN)   (mod 2^64)
 *   numeric token t:            mix64((uint64) t xor TAG_NUM);  empty: EMPTY_KEY
 * The constants come from Python (one source of truth): P^0..P^63, the small-integer tables.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NUM_INT 13
#define NUM_CAT 26
#define CRITEO_COLUMNS 40
#define PREFETCH 8        /* hash-table probes are issued this many keys ahead */
#define GATHER_BLOCK 128 /* rows per block in rc_lookup_gather: 128 x 39 x 4 bytes of output fit L1 */
#define TABLE 65536 /* non-negative integers below this use the precomputed key / log1p tables */

enum { OK = 0, BAD_COLUMNS = 1, BAD_VALUE = 2, BAD_CR = 3 };

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_ADDR(p) __builtin_prefetch(p)
#else
#define PREFETCH_ADDR(p) ((void)(p))
#endif
enum { NUMBER = 0, EMPTY = 1, NOT_A_NUMBER = 2 };

static const uint64_t C_LEN = 0xC2B2AE3D27D4EB4FULL;

static inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* buf[s:e) as a number: [+-]? digits [. digits] [(e|E) [+-]? digits], at least one digit,
 * with surrounding ASCII spaces ignored (as pyarrow's CSV reader ignores them; a field of
 * only spaces is not a number).  Up to 19 significant digits and |exp10| <= 22: one
 * correctly rounded operation (= strtod). */
static int parse_number(const uint8_t *buf, int64_t s, int64_t e, double *out) {
    if (s == e) {
        *out = 0.0;
        return EMPTY;
    }
    while (s < e && buf[s] == ' ') s++;
    while (e > s && buf[e - 1] == ' ') e--;
    if (s == e) return NOT_A_NUMBER;
    int64_t i = s;
    int neg = 0;
    if (buf[i] == '-' || buf[i] == '+') {
        neg = buf[i] == '-';
        i++;
    }
    uint64_t mant = 0;
    int digits = 0, seen = 0;
    int64_t exp10 = 0;
    while (i < e && buf[i] >= '0' && buf[i] <= '9') {
        seen = 1;
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(buf[i] - '0');
            if (mant > 0) digits++;
        } else {
            exp10++;
        }
        i++;
    }
    if (i < e && buf[i] == '.') {
        i++;
        while (i < e && buf[i] >= '0' && buf[i] <= '9') {
            seen = 1;
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(buf[i] - '0');
                exp10--;
                if (mant > 0) digits++;
            }
            i++;
        }
    }
    if (!seen) return NOT_A_NUMBER;
    if (i < e && (buf[i] == 'e' || buf[i] == 'E')) {
        i++;
        int eneg = 0;
        if (i < e && (buf[i] == '-' || buf[i] == '+')) {
            eneg = buf[i] == '-';
            i++;
        }
        if (i == e) return NOT_A_NUMBER;
        int64_t ev = 0;
        while (i < e && buf[i] >= '0' && buf[i] <= '9') {
            if (ev < 100000) ev = ev * 10 + (buf[i] - '0');
            i++;
        }
        exp10 += eneg ? -ev : ev;
    }
    if (i != e) return NOT_A_NUMBER;
    double v = (double)mant;
    if (exp10 != 0 && mant != 0) {
        if (mant < (1ULL << 53) && exp10 >= -22 && exp10 <= 22)
            v = exp10 > 0 ? v * POW10[exp10] : v / POW10[-exp10];
        else
            v = v * pow(10.0, (double)exp10);
    }
    if (!isfinite(v)) return NOT_A_NUMBER;
    *out = neg ? -v : v;
    return NUMBER;
}

/* Polynomial hash sum of buf[s:e), without the final length xor and mix. */
static inline uint64_t poly_sum(const uint8_t *buf, int64_t s, int64_t e, const uint64_t *pows, uint64_t p) {
    uint64_t h = 0;
    int64_t i = s;
    int64_t head = e - s < 64 ? e : s + 64;
    for (; i < head; i++) h += ((uint64_t)buf[i] + 1) * pows[i - s];
    if (i < e) { /* longer than 64 bytes: continue the powers by multiplication */
        uint64_t pw = pows[63] * p;
        for (; i < e; i++) {
            h += ((uint64_t)buf[i] + 1) * pw;
            pw *= p;
        }
    }
    return h;
}

static inline int has_tab(uint64_t w) { /* any byte == '\t' (SWAR zero-byte test) */
    uint64_t x = w ^ 0x0909090909090909ULL;
    return ((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) != 0;
}

int64_t rc_count_newlines(const uint8_t *buf, int64_t n) {
    int64_t c = 0;
    const uint8_t *p = buf, *end = buf + n;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        c++;
        p++;
    }
    return c;
}

/* Scans n bytes of Criteo TSV lines.  keys: uint64 [F, cap] (F = 39, or 26 when dense_mode);
 * dense float32 [cap, 13] (dense_mode only); labels/status/aux/lines [cap] with cap >= the number
 * of rows (newlines + 1 always is).  Returns the number of rows (non-empty lines), or -1 if there
 * are more than cap, and sets *newlines_out to the number of '\n' bytes. */
int64_t rc_scan_criteo(const uint8_t *buf, int64_t n, int32_t dense_mode, int64_t cap, const uint64_t *pows,
                       const uint64_t *key_table, const float *log_table, uint64_t tag_num, uint64_t empty_key,
                       uint64_t *keys, float *dense, float *labels, int8_t *status, int32_t *aux, int64_t *lines,
                       int64_t *newlines_out) {
    const int cat0 = dense_mode ? 0 : NUM_INT; /* output field of C1 */
    const uint64_t p = pows[1];
    uint64_t sum8 = 0; /* sum of P^0..P^7: the "+1" of an 8-byte value's terms */
    for (int k = 0; k < 8; k++) sum8 += pows[k];
    int64_t pos = 0, line = 0, r = 0, newlines = 0;
    while (pos < n) {
        line++;
        const uint8_t *nl = memchr(buf + pos, '\n', (size_t)(n - pos));
        int64_t end = nl ? nl - buf : n;
        int64_t nxt = end + 1;
        if (nl) newlines++;
        if (end > pos && buf[end - 1] == '\r') end--;
        if (end == pos) { /* empty line: skipped, like pyarrow's reader */
            pos = nxt;
            continue;
        }
        /* a CR left inside the line ends it for pyarrow's reader, not here: such a row is bad in both
         * engines (BAD_CR).  The line's bytes are in L1 after the memchr above: ~nothing per row. */
        const int has_cr = memchr(buf + pos, '\r', (size_t)(end - pos)) != NULL;
        if (r >= cap) return -1;
        lines[r] = line;
        int bad_col = -1, col = 0;
        int64_t s = pos;
        for (;;) { /* field `col` starts at s; each branch leaves i at its end (a tab or the line end) */
            int64_t i = s;
            if (col <= NUM_INT) {
                int64_t iv = 0;
                int state, small;
                double v;
                while (i < end && buf[i] >= '0' && buf[i] <= '9' && i - s < 15) { /* plain integer */
                    iv = iv * 10 + (buf[i] - '0');
                    i++;
                }
                if (i > s && (i == end || buf[i] == '\t')) {
                    state = NUMBER;
                    v = (double)iv;
                    small = iv < TABLE;
                } else {
                    while (i < end && buf[i] != '\t') i++;
                    v = 0.0;
                    state = parse_number(buf, s, i, &v);
                    small = state == NUMBER && v >= 0 && v < TABLE && v == floor(v);
                    iv = small ? (int64_t)v : 0;
                }
                if (col == 0) {
                    if (state != NUMBER || v < 0) {
                        if (bad_col < 0) bad_col = 0;
                    } else {
                        labels[r] = v > 0 ? 1.0f : 0.0f;
                    }
                } else if (state == NOT_A_NUMBER) {
                    if (bad_col < 0) bad_col = col;
                } else if (dense_mode) {
                    dense[r * NUM_INT + col - 1] = small ? log_table[iv] : (float)log1p(v > 0.0 ? v : 0.0);
                } else if (state == EMPTY) {
                    keys[(col - 1) * cap + r] = empty_key;
                } else if (small) {
                    keys[(col - 1) * cap + r] = key_table[iv];
                } else {
                    double lv = v > 2 ? log(v) : 0.0;
                    /* below -2^63 the cast is undefined in C; numpy's astype(int64) gives INT64_MIN */
                    int64_t tok = v > 2                       ? (int64_t)floor(lv * lv)
                                  : v < -9.2233720368547758e18 ? INT64_MIN
                                                               : (int64_t)trunc(v);
                    keys[(col - 1) * cap + r] = mix64((uint64_t)tok ^ tag_num);
                }
            } else if (col < CRITEO_COLUMNS) {
                uint64_t h;
                uint64_t w;
                /* fast path: 8 bytes with no tab, then a tab or the line end (nearly every Criteo value) */
                if (i + 8 <= end && (i + 8 == end || buf[i + 8] == '\t') && (memcpy(&w, buf + i, 8), !has_tab(w))) {
                    h = sum8 + buf[i] * pows[0] + buf[i + 1] * pows[1] + buf[i + 2] * pows[2] + buf[i + 3] * pows[3] +
                        buf[i + 4] * pows[4] + buf[i + 5] * pows[5] + buf[i + 6] * pows[6] + buf[i + 7] * pows[7];
                    i += 8;
                } else {
                    while (i < end && buf[i] != '\t') i++;
                    h = poly_sum(buf, s, i, pows, p);
                }
                keys[(cat0 + col - 1 - NUM_INT) * cap + r] = mix64(h ^ ((uint64_t)(i - s) * C_LEN));
            } else {
                while (i < end && buf[i] != '\t') i++;
            }
            col++;
            if (i >= end) break;
            s = i + 1;
        }
        if (has_cr) {
            status[r] = BAD_CR;
            aux[r] = 0;
        } else if (col != CRITEO_COLUMNS) {
            status[r] = BAD_COLUMNS;
            aux[r] = col;
        } else if (bad_col >= 0) {
            status[r] = BAD_VALUE;
            aux[r] = bad_col;
        } else {
            status[r] = OK;
            aux[r] = 0;
        }
        r++;
        pos = nxt;
    }
    *newlines_out = newlines;
    return r;
}

/* Open-addressing table of (key, index + 1; 0 = free) pairs: key and index share a cache line. */
typedef struct {
    uint64_t *slots;
    int64_t size; /* power of two */
} Table;

static int table_init(Table *t, int64_t size) {
    t->size = size;
    t->slots = calloc((size_t)(2 * size), sizeof(uint64_t));
    return t->slots != NULL;
}

/* Index of key k, whose keys so far are keys[0 .. *count) by index; a new key is appended as index
 * *count and *added set.  The table starts small and doubles at half load, so a table with few keys
 * (a numeric field's) stays in L1.  Keys are mixed already: their low bits are uniform.
 * Returns -1 when out of memory. */
static inline int64_t table_index(Table *t, uint64_t k, uint64_t *keys, int64_t *count, int *added) {
    int64_t mask = t->size - 1;
    int64_t h = (int64_t)(k & (uint64_t)mask);
    *added = 0;
    for (;;) {
        uint64_t j1 = t->slots[2 * h + 1];
        if (j1 != 0 && t->slots[2 * h] == k) return (int64_t)j1 - 1;
        if (j1 == 0) break;
        h = (h + 1) & mask;
    }
    int64_t j = (*count)++;
    t->slots[2 * h] = k;
    t->slots[2 * h + 1] = (uint64_t)(j + 1);
    keys[j] = k;
    *added = 1;
    if (2 * *count > t->size) { /* grow: reinsert every key */
        free(t->slots);
        if (!table_init(t, 2 * t->size)) return -1;
        int64_t m2 = t->size - 1;
        for (int64_t jj = 0; jj < *count; jj++) {
            int64_t hh = (int64_t)(keys[jj] & (uint64_t)m2);
            while (t->slots[2 * hh + 1] != 0) hh = (hh + 1) & m2;
            t->slots[2 * hh] = keys[jj];
            t->slots[2 * hh + 1] = (uint64_t)(jj + 1);
        }
    }
    return j;
}

/* Per field, dictionary-encodes keys[f, rows[i]] (keys: [F, stride]) into indices [F, n] (int32)
 * and appends the field's distinct keys (first-seen order) to distinct / their train-row counts to
 * counts (both sized F * n by the caller); offsets [F + 1].  Returns 0, or -1 when out of memory. */
int32_t rc_dict_encode(const uint64_t *keys, int64_t stride, int64_t num_fields, const int64_t *rows, int64_t n,
                       const uint8_t *train, int32_t *indices, uint64_t *distinct, int64_t *counts,
                       int64_t *offsets) {
    offsets[0] = 0;
    for (int64_t f = 0; f < num_fields; f++) {
        Table t;
        if (!table_init(&t, 1024)) return -1;
        const uint64_t *kf = keys + f * stride;
        int32_t *out = indices + f * n;
        int64_t base = offsets[f], m = 0;
        int added;
        for (int64_t i = 0; i < n; i++) {
            /* tables of the many-valued fields outgrow L2: start the miss of a later key now */
            if (i + PREFETCH < n) PREFETCH_ADDR(t.slots + 2 * (int64_t)(kf[rows[i + PREFETCH]] & (uint64_t)(t.size - 1)));
            int64_t j = table_index(&t, kf[rows[i]], distinct + base, &m, &added);
            if (j < 0) return -1;
            if (added) counts[base + j] = 0;
            out[i] = (int32_t)j;
            counts[base + j] += train[i];
        }
        free(t.slots);
        offsets[f + 1] = base + m;
    }
    return 0;
}

/* --hash ids: out [n, F] int32 = keys[f, rows[i]] % n_buckets (keys: [F, stride]). */
void rc_mod_ids(const uint64_t *keys, int64_t stride, int64_t num_fields, const int64_t *rows, int64_t n,
                uint64_t n_buckets, int32_t *out) {
    for (int64_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        for (int64_t f = 0; f < num_fields; f++) out[i * num_fields + f] = (int32_t)(keys[f * stride + r] % n_buckets);
    }
}

/* Distinct keys (first-seen order) with summed counts: out_keys / out_counts sized n by the caller.
 * Returns the number of distinct keys, or -1 when out of memory. */
int64_t rc_sum_by_key(const uint64_t *keys, const int64_t *counts, int64_t n, uint64_t *out_keys,
                      int64_t *out_counts) {
    Table t;
    if (!table_init(&t, 1024)) return -1;
    int64_t m = 0;
    int added;
    for (int64_t i = 0; i < n; i++) {
        if (i + PREFETCH < n) PREFETCH_ADDR(t.slots + 2 * (int64_t)(keys[i + PREFETCH] & (uint64_t)(t.size - 1)));
        int64_t j = table_index(&t, keys[i], out_keys, &m, &added);
        if (j < 0) return -1;
        if (added) out_counts[j] = 0;
        out_counts[j] += counts[i];
    }
    free(t.slots);
    return m;
}

/* Fills the per-field vocabulary tables: field f's slots are tbl[base[f] .. base[f] + 2 * (mask[f] + 1)),
 * zeroed by the caller, and hold (key, id >= 1) for keys[voff[f] .. voff[f + 1]). */
void rc_build_vocab_tables(const uint64_t *keys, const int64_t *ids, const int64_t *voff, int64_t num_fields,
                           const int64_t *base, const int64_t *mask, uint64_t *tbl) {
    for (int64_t f = 0; f < num_fields; f++) {
        uint64_t *t = tbl + base[f];
        int64_t m = mask[f];
        for (int64_t j = voff[f]; j < voff[f + 1]; j++) {
            int64_t h = (int64_t)(keys[j] & (uint64_t)m);
            while (t[2 * h + 1] != 0) h = (h + 1) & m;
            t[2 * h] = keys[j];
            t[2 * h + 1] = (uint64_t)ids[j];
        }
    }
}

/* Vocabulary pass 2: each distinct key of the chunk -> its id (0 = OOV), then out [n, F] int32 with
 * the rows grouped by split (file order within one); order [n] maps output rows to chunk rows and
 * starts [S + 1] delimits the splits.  Returns 0, or -1 when out of memory. */
int32_t rc_lookup_gather(const int32_t *indices, int64_t num_fields, int64_t n, const uint64_t *keys,
                         const int64_t *offsets, const uint64_t *tbl, const int64_t *base, const int64_t *mask,
                         const uint8_t *split, int64_t num_splits, int32_t *out, int64_t *order, int64_t *starts) {
    int64_t nkeys = offsets[num_fields];
    int32_t *local = calloc((size_t)(nkeys > 0 ? nkeys : 1), sizeof(int32_t));
    int64_t *at = malloc((size_t)(num_splits > 0 ? num_splits : 1) * sizeof(int64_t));
    if (!local || !at) {
        free(local);
        free(at);
        return -1;
    }
    for (int64_t f = 0; n > 0 && f < num_fields; f++) {
        const uint64_t *t = tbl + base[f];
        int64_t m = mask[f];
        for (int64_t j = offsets[f]; j < offsets[f + 1]; j++) {
            uint64_t k = keys[j];
            int64_t h = (int64_t)(k & (uint64_t)m);
            if (j + PREFETCH < offsets[f + 1]) PREFETCH_ADDR(t + 2 * (int64_t)(keys[j + PREFETCH] & (uint64_t)m));
            for (;;) {
                uint64_t v = t[2 * h + 1];
                if (v == 0) break;
                if (t[2 * h] == k) {
                    local[j] = (int32_t)v;
                    break;
                }
                h = (h + 1) & m;
            }
        }
    }
    for (int64_t s = 0; s <= num_splits; s++) starts[s] = 0;
    for (int64_t i = 0; i < n; i++) starts[split[i] + 1]++;
    for (int64_t s = 0; s < num_splits; s++) starts[s + 1] += starts[s];
    for (int64_t s = 0; s < num_splits; s++) at[s] = starts[s];
    for (int64_t i = 0; i < n; i++) order[at[split[i]]++] = i;
    /* blocks of rows, field by field inside a block: the reads of indices (field-major) run along
     * one field and the block of out (row-major) stays in L1 while its fields are filled in */
    for (int64_t o0 = 0; o0 < n; o0 += GATHER_BLOCK) {
        int64_t o1 = o0 + GATHER_BLOCK < n ? o0 + GATHER_BLOCK : n;
        for (int64_t f = 0; f < num_fields; f++) {
            const int32_t *idx = indices + f * n;
            const int32_t *loc = local + offsets[f];
            for (int64_t o = o0; o < o1; o++) out[o * num_fields + f] = loc[idx[order[o]]];
        }
    }
    free(local);
    free(at);
    return 0;
}
