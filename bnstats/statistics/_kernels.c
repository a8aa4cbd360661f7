/* The loops bnstats runs per value: exact per-channel histograms of 8- and 16-bit pixels, and the
 * undoing of PNG row filters.
 *
 * Optional: setup.py builds it when a C compiler is there, and bnstats/kernels.py
 * falls back to numpy (same counts) when it is not, or when BNSTATS_PURE_PYTHON=1.
 *
 * histogram(data, itemsize, stride, channels, out)
 *     data      a C-contiguous buffer of pixels, `stride` unsigned native-endian items of
 *               `itemsize` bytes (1 or 2) per pixel
 *     channels  the first `channels` items of each pixel are counted (1 <= channels <= stride)
 *     out       a writable C-contiguous buffer of channels * levels int64 counts, levels = 256
 *               or 65536; the counts are added to it
 *
 * 8-bit counts go to four interleaved sets of per-channel counters (pixel i to set i % 4), so
 * that runs of equal values (flat regions of photos) do not wait on the previous increment.
 *
 * png_unfilter(data, height, rowbytes, bpp) -> bytes
 *     data      the inflated image data of a non-interlaced PNG: `height` rows, each a filter-type
 *               byte and `rowbytes` bytes; `bpp` bytes per complete pixel (1..8)
 *     returns the `height * rowbytes` bytes of the pixels as stored (PNG's five filters undone, as
 *     in section 9 of the PNG specification); ValueError for a filter type other than 0..4
 *
 * channel_moments(data, n, channels, values, mean, m2)
 *     data      a C-contiguous float32 (n, channels, values) array: a BatchNorm layer's input batch
 *     mean, m2  writable C-contiguous float64 buffers of `channels` values: each channel's mean and
 *               M2 = sum((x - mean)**2) over its n * values numbers, two-pass in float64
 *
 * The data is read in memory order, in tiles of whole samples that fit in the L2 cache; each tile is
 * read twice (the second time from cache), and the tiles' moments are merged with Chan's formula.
 * The sums run in a fixed number of lanes (value j of a plane goes to lane j % 16, or % 4 for short
 * planes; the lanes are added pairwise at the end), so the compiler may vectorize them without
 * reassociating anything: every build gives the same bits (setup.py turns off fused multiply-adds).
 * On x86 the same code is also compiled for AVX and chosen at run time.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHANNELS 16

static int count_u8(const uint8_t *p, Py_ssize_t pixels, Py_ssize_t stride, int channels, int64_t *out)
{
    /* four sets of 32-bit counters, pixel i counted in set i % 4, flushed to out every BLOCK pixels */
    enum { SETS = 4, BLOCK = 1 << 28 };
    uint32_t (*n)[MAX_CHANNELS][256] = calloc(SETS, sizeof(*n));
    if (n == NULL)
        return -1;
    while (pixels > 0) {
        Py_ssize_t block = pixels < BLOCK ? pixels : BLOCK, i = 0;
        if (channels == 3) {
            for (; i + 3 < block; i += 4, p += 4 * stride) {
                const uint8_t *q = p;
                n[0][0][q[0]]++; n[0][1][q[1]]++; n[0][2][q[2]]++; q += stride;
                n[1][0][q[0]]++; n[1][1][q[1]]++; n[1][2][q[2]]++; q += stride;
                n[2][0][q[0]]++; n[2][1][q[1]]++; n[2][2][q[2]]++; q += stride;
                n[3][0][q[0]]++; n[3][1][q[1]]++; n[3][2][q[2]]++;
            }
        } else if (channels == 1) {
            for (; i + 3 < block; i += 4, p += 4 * stride) {
                n[0][0][p[0]]++; n[1][0][p[stride]]++; n[2][0][p[2 * stride]]++; n[3][0][p[3 * stride]]++;
            }
        }
        for (; i < block; i++, p += stride)
            for (int c = 0; c < channels; c++)
                n[i % SETS][c][p[c]]++;
        for (int k = 0; k < SETS; k++)
            for (int c = 0; c < channels; c++)
                for (int v = 0; v < 256; v++) {
                    out[c * 256 + v] += n[k][c][v];
                    n[k][c][v] = 0;
                }
        pixels -= block;
    }
    free(n);
    return 0;
}

static void count_u16(const uint16_t *p, Py_ssize_t pixels, Py_ssize_t stride, int channels, int64_t *out)
{
    for (Py_ssize_t i = 0; i < pixels; i++, p += stride)
        for (int c = 0; c < channels; c++)
            out[(Py_ssize_t)c * 65536 + p[c]]++;
}

static PyObject *histogram(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    int itemsize, channels;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*iniw*", &data, &itemsize, &stride, &channels, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t levels = itemsize == 1 ? 256 : 65536;
    if ((itemsize != 1 && itemsize != 2) || channels < 1 || channels > MAX_CHANNELS || stride < channels) {
        PyErr_SetString(PyExc_ValueError, "itemsize must be 1 or 2, and 1 <= channels <= min(stride, 16)");
    } else if (data.len % (stride * itemsize)) {
        PyErr_SetString(PyExc_ValueError, "the data is not a whole number of pixels");
    } else if (out.len != channels * levels * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "out must hold channels * levels int64 counts");
    } else if (!PyBuffer_IsContiguous(&data, 'C') || !PyBuffer_IsContiguous(&out, 'C')) {
        PyErr_SetString(PyExc_ValueError, "data and out must be C-contiguous");
    } else {
        Py_ssize_t pixels = data.len / (stride * itemsize);
        int status = 0;
        Py_BEGIN_ALLOW_THREADS
        if (itemsize == 1)
            status = count_u8((const uint8_t *)data.buf, pixels, stride, channels, (int64_t *)out.buf);
        else
            count_u16((const uint16_t *)data.buf, pixels, stride, channels, (int64_t *)out.buf);
        Py_END_ALLOW_THREADS
        if (status) {
            PyErr_NoMemory();
        } else {
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static int paeth(int a, int b, int c)
{
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Undo the filters of `height` rows: row y of `in` is its filter type then rowbytes bytes; out gets the bytes. */
static int unfilter_rows(uint8_t *out, const uint8_t *in, Py_ssize_t height, Py_ssize_t rowbytes, int bpp)
{
    const uint8_t *prior = NULL;
    for (Py_ssize_t y = 0; y < height; y++, in += rowbytes + 1, out += rowbytes) {
        int type = in[0];
        const uint8_t *x = in + 1;
        Py_ssize_t i;
        if (type > 4)
            return -1;
        if (prior == NULL && type >= 2) /* the row above the first is zeros */
            type = type == 2 ? 0 : type == 3 ? 5 : 1;  /* Up -> None, Average -> half of left, Paeth -> Sub */
        switch (type) {
        case 0:
            memcpy(out, x, rowbytes);
            break;
        case 1:
            for (i = 0; i < bpp && i < rowbytes; i++)
                out[i] = x[i];
            for (; i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + out[i - bpp]);
            break;
        case 2:
            for (i = 0; i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + prior[i]);
            break;
        case 3:
            for (i = 0; i < bpp && i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + (prior[i] >> 1));
            for (; i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + ((out[i - bpp] + prior[i]) >> 1));
            break;
        case 4:
            for (i = 0; i < bpp && i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + prior[i]);
            for (; i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + paeth(out[i - bpp], prior[i], prior[i - bpp]));
            break;
        case 5: /* Average on the first row */
            for (i = 0; i < bpp && i < rowbytes; i++)
                out[i] = x[i];
            for (; i < rowbytes; i++)
                out[i] = (uint8_t)(x[i] + (out[i - bpp] >> 1));
            break;
        }
        prior = out;
    }
    return 0;
}

static PyObject *png_unfilter(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t height, rowbytes;
    int bpp;
    if (!PyArg_ParseTuple(args, "y*nni", &data, &height, &rowbytes, &bpp))
        return NULL;
    PyObject *result = NULL;
    if (height < 0 || rowbytes < 0 || rowbytes == PY_SSIZE_T_MAX || bpp < 1 || bpp > 8
        || height > PY_SSIZE_T_MAX / (rowbytes + 1)) {
        PyErr_SetString(PyExc_ValueError, "height, rowbytes >= 0 and 1 <= bpp <= 8");
    } else if (data.len != height * (rowbytes + 1)) {
        PyErr_SetString(PyExc_ValueError, "data must be height rows of a filter byte and rowbytes bytes");
    } else {
        result = PyBytes_FromStringAndSize(NULL, height * rowbytes);
        if (result != NULL) {
            int status;
            Py_BEGIN_ALLOW_THREADS
            status = unfilter_rows((uint8_t *)PyBytes_AS_STRING(result), (const uint8_t *)data.buf, height,
                                   rowbytes, bpp);
            Py_END_ALLOW_THREADS
            if (status) {
                Py_CLEAR(result);
                PyErr_SetString(PyExc_ValueError, "unknown PNG filter type");
            }
        }
    }
    PyBuffer_Release(&data);
    return result;
}

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

/* One pass over samples k0..k1 (a tile) in memory order, adding each value less its channel's shift, or
 * (square) that difference squared. Value j of a plane goes to lane j % L of its channel,
 * acc[c * (L + 1) + j % L]; the values after the last whole group of L to lane L. */
INLINE void tile_pass(const float *x, Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t channels, Py_ssize_t values,
                      const int L, const double *shift, const int square, double *acc)
{
    memset(acc, 0, (size_t)channels * (L + 1) * sizeof(double));
    for (Py_ssize_t k = k0; k < k1; k++)
        for (Py_ssize_t c = 0; c < channels; c++) {
            const float *p = x + (k * channels + c) * values;
            double *a = acc + (L + 1) * c, v = shift[c];
            Py_ssize_t j = 0;
            for (; j + L <= values; j += L)
                for (int l = 0; l < L; l++) {
                    double d = p[j + l] - v;
                    a[l] += square ? d * d : d;
                }
            for (; j < values; j++) {
                double d = p[j] - v;
                a[L] += square ? d * d : d;
            }
        }
}

/* a channel's L + 1 lanes added pairwise, in the same order on every build */
INLINE double lane_total(double *a, const int L)
{
    for (int w = L / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            a[l] += a[l + w];
    return a[0] + a[L];
}

/* Tiles of whole samples of at most TILE_BYTES (at least one sample), each read twice: the second pass
 * finds the tile in cache. Each tile's (mean, M2) is two-pass; tiles are merged with Chan's formula.
 * The sums and the merges work on the values minus a pivot per channel (its first value), so that a mean
 * far from zero next to a small spread is not rounded into Chan's delta terms. acc holds
 * channels * (L + 1) lanes, then three numbers per channel: the pivot, the tile's mean, and its mean
 * less the pivot. */
enum { TILE_BYTES = 256 * 1024 };

INLINE void moments_tiled(const float *x, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t values, const int L,
                          double *mean, double *m2, double *acc)
{
    double *pivot = acc + (L + 1) * channels, *tile_mean = pivot + channels, *shifted = tile_mean + channels;
    for (Py_ssize_t c = 0; c < channels; c++)
        pivot[c] = isfinite(x[c * values]) ? x[c * values] : 0.0;
    Py_ssize_t per = TILE_BYTES / ((Py_ssize_t)sizeof(float) * channels * values);
    if (per < 1)
        per = 1;
    for (Py_ssize_t k0 = 0; k0 < n; k0 += per) {
        Py_ssize_t k1 = k0 + per < n ? k0 + per : n;
        const double before = (double)k0 * values, count = (double)(k1 - k0) * values, total = before + count;
        tile_pass(x, k0, k1, channels, values, L, pivot, 0, acc);
        for (Py_ssize_t c = 0; c < channels; c++) {
            shifted[c] = lane_total(acc + (L + 1) * c, L) / count;
            tile_mean[c] = pivot[c] + shifted[c];
        }
        tile_pass(x, k0, k1, channels, values, L, tile_mean, 1, acc);
        for (Py_ssize_t c = 0; c < channels; c++) {
            double q = lane_total(acc + (L + 1) * c, L);
            if (k0 == 0) {  /* mean[] holds the means less the pivots until the end */
                mean[c] = shifted[c];
                m2[c] = q;
            } else {
                double delta = shifted[c] - mean[c];
                mean[c] += delta * (count / total);
                m2[c] += q + delta * delta * (before * count / total);
            }
        }
    }
    for (Py_ssize_t c = 0; c < channels; c++)
        mean[c] += pivot[c];
}

enum { LANES = 16 };  /* at most: acc holds channels * (LANES + 4) numbers */

#define MOMENTS_ARGS const float *x, Py_ssize_t n, Py_ssize_t channels, Py_ssize_t values, double *mean, \
                     double *m2, double *acc
#define MOMENTS_BODY {                                                                \
    if (values >= 16)                                                                 \
        moments_tiled(x, n, channels, values, 16, mean, m2, acc);                     \
    else if (values % 4 == 0)                                                         \
        moments_tiled(x, n, channels, values, 4, mean, m2, acc);                      \
    else                                                                              \
        moments_tiled(x, n, channels, values, 1, mean, m2, acc);                      \
}
static void moments(MOMENTS_ARGS) MOMENTS_BODY
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX_CLONE
__attribute__((target("avx"))) static void moments_avx(MOMENTS_ARGS) MOMENTS_BODY
#endif

static PyObject *channel_moments(PyObject *self, PyObject *args)
{
    Py_buffer data, mean, m2;
    Py_ssize_t n, channels, values;
    if (!PyArg_ParseTuple(args, "y*nnnw*w*", &data, &n, &channels, &values, &mean, &m2))
        return NULL;
    PyObject *result = NULL;
    if (n < 1 || channels < 1 || values < 1 || n > PY_SSIZE_T_MAX / channels / values / 4
        || data.len != n * channels * values * 4) {
        PyErr_SetString(PyExc_ValueError, "data must hold n * channels * values float32 numbers, each >= 1");
    } else if (mean.len != channels * 8 || m2.len != channels * 8) {
        PyErr_SetString(PyExc_ValueError, "mean and m2 must hold channels float64 numbers");
    } else if (!PyBuffer_IsContiguous(&data, 'C') || !PyBuffer_IsContiguous(&mean, 'C')
               || !PyBuffer_IsContiguous(&m2, 'C')) {
        PyErr_SetString(PyExc_ValueError, "data, mean and m2 must be C-contiguous");
    } else {
        double *acc = PyMem_RawMalloc((size_t)channels * (LANES + 4) * sizeof(double));
        if (acc == NULL) {
            PyErr_NoMemory();
        } else {
            Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX_CLONE
            if (__builtin_cpu_supports("avx"))
                moments_avx(data.buf, n, channels, values, mean.buf, m2.buf, acc);
            else
#endif
                moments(data.buf, n, channels, values, mean.buf, m2.buf, acc);
            Py_END_ALLOW_THREADS
            PyMem_RawFree(acc);
            result = Py_None;
            Py_INCREF(result);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&mean);
    PyBuffer_Release(&m2);
    return result;
}

static PyMethodDef methods[] = {
    {"histogram", histogram, METH_VARARGS,
     "histogram(data, itemsize, stride, channels, out): add the per-channel counts of data to out."},
    {"png_unfilter", png_unfilter, METH_VARARGS,
     "png_unfilter(data, height, rowbytes, bpp) -> bytes: a PNG's pixels as stored, its row filters undone."},
    {"channel_moments", channel_moments, METH_VARARGS,
     "channel_moments(data, n, channels, values, mean, m2): per-channel float64 mean and M2 of float32 data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
