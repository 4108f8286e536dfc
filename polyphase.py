"""resampy's band-limited sinc resampling as a polyphase matrix product: resampy's numbers, faster.

resampy 0.4 (`resampy.resample`, pinned) computes every output sample in a scalar loop: for
output t at input time tr = t / ratio it interpolates its windowed-sinc table at the
fractional offsets of tr and sums the taps around int(tr). For integer rates the ratio is
L / M in lowest terms, so output t + L sits M input samples after output t at the same
fractional offset: the taps repeat with period L. Here each phase's taps are computed once,
with resampy's own table interpolation (same filter file, rolloff, scaling, wings and tap
counts), and the filter runs as matrix products over a block of periods (BLAS), in the
arithmetic resampy uses for the input's dtype (float32 or float64 taps and sums).

resampy's own positions are not exactly periodic: tr = t * (1 / ratio) is rounded in float64,
so a phase's fractional offset drifts by up to ~|tr| * 4e-16 (1e-10 samples at 30 s).
resampy's taps are linear in the interpolation factor eta: w = win[i] + eta * delta[i]. So
each output is taken as (the phase's taps at the exact rational eta) . x + c_t * (delta
taps) . x, with c_t = this sample's eta (as resampy computes it, in float64) minus the
phase's: the second product is the drift's exact first-order term (it is linear), small
(|c_t| ~ 1e-6 at 30 s), and is summed in float32. Where the rounding moves a sample across
a table entry or an input sample (its integer offsets differ from its phase's; mostly
phases whose exact offsets are integers), that sample's own taps are used (extra columns).
Edges: zeros beyond the signal, which is what resampy's truncated wings sum.

Precision against resampy (tested in tests/test_audio_io.py, measured in BENCHMARKS.md):
- float64: each output is the same sum of the same float64 products in another order, plus
  the drift term; |ours - resampy| <= ~2 n eps64 sum_i |w_i x_i| per sample (n taps, a few
  hundred), i.e. well under 1e-12 of max |y| (measured ~1e-15).
- float32: resampy adds each float64 product into a float32 sum (rounded per tap); ours
  rounds the taps to float32 and sums in float32 (BLAS order). Per sample,
  |ours - resampy| <= (2 n + 3) u32 sum_i |w_i x_i| with u32 = 2^-24 (the rigorous bound;
  typical differences are ~sqrt(n) u32 of that, ~1e-7 of max |y|).

Rates whose ratio has a period longer than MAX_PERIOD, non-integer rates and non-finite
input run resampy's own loop (the same numbers as resampy.resample).
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction

import numpy as np

FILTERS = ("kaiser_best", "kaiser_fast")
PRECISIONS = ("float32", "float64")
# Output samples per period (L) up to which the polyphase path runs: beyond it the phases'
# taps (L x taps) cost more to build and hold than they save.
MAX_PERIOD = 2048
# Output columns per matrix product: consecutive phases sharing one input window.
_GROUP = 32
# Output samples per block (at least 16 rows): bounds the work memory, whatever the length.
_BLOCK_OUT = 1 << 15
# Input samples per row of the block matrix at least (short periods are stacked k per row).
_MIN_ROW = 256
# Multiply-adds per BLAS call at most: OpenBLAS (numpy's) threads a product only beyond
# 65536 * GEMM_MULTITHREAD_THRESHOLD (4) of them (interface/gemm.c).
_MAX_MNK = 1 << 18


def supported(sr_in: float, sr_out: float, filter: str = "kaiser_best") -> bool:
    """Whether `resample` runs these rates as a polyphase product (integer rates whose ratio
    has a period of at most MAX_PERIOD output samples, a filter in FILTERS)."""
    if filter not in FILTERS:
        return False
    try:
        fi, fo = Fraction(sr_in), Fraction(sr_out)
    except (TypeError, ValueError):
        return False
    if fi.denominator != 1 or fo.denominator != 1 or fi <= 0 or fo <= 0 or fi == fo:
        return False
    return fo.numerator // math.gcd(fi.numerator, fo.numerator) <= MAX_PERIOD


class Plan:
    """Taps and matrix layout for one (sr_in, sr_out, filter), built once and reused.

    The ratio is L / M in lowest terms. A block row holds k periods: Mr = k M input samples
    and Lr = k L outputs. Output t = q Lr + c (row q, column c = j L + p: phase p of the
    row's j-th period) sits at input time q Mr + base_c + r_p / L, base_c = j M + n_p.
    """

    def __init__(self, sr_in: int, sr_out: int, filter: str = "kaiser_best") -> None:
        from resampy.filters import get_filter

        self.sr_in, self.sr_out, self.filter = int(sr_in), int(sr_out), filter
        # resampy.resample's set-up, step for step (the same float64 numbers)
        self.ratio = float(sr_out) / sr_in
        win, num_table, _ = get_filter(filter)
        self.num_table = int(num_table)  # a power of two (2^13 kaiser_best, 2^9 kaiser_fast)
        assert self.num_table & (self.num_table - 1) == 0, "positions below assume a power of two"
        if self.ratio < 1:
            win = self.ratio * win
        self.win = win
        self.delta = np.diff(win, append=win[-1])
        self.scale = min(1.0, self.ratio)
        self.increment = 1.0 / self.ratio
        self.index_step = int(self.scale * self.num_table)
        g = math.gcd(self.sr_in, self.sr_out)
        self.L, self.M = self.sr_out // g, self.sr_in // g
        self.k = max(1, -(-_MIN_ROW // self.M))
        self.Lr, self.Mr = self.k * self.L, self.k * self.M
        L, M = self.L, self.M
        # Each phase's exact time: n_p + r_p / L input samples after its period's start; its
        # table positions (float64, resampy's formulas at that exact time) and offsets.
        p = np.arange(L)
        self.n_p = (p * M) // L
        frac = self.scale * (((p * M) % L) / L)
        self.idx_ref = frac * self.num_table
        self.idxR_ref = (self.scale - frac) * self.num_table
        pp = np.tile(p, self.k)
        self.col_phase = pp
        self.col_base = np.repeat(np.arange(self.k), L) * M + self.n_p[pp]
        self.col_off = self.idx_ref[pp].astype(np.int64)
        self.col_offR = self.idxR_ref[pp].astype(np.int64)
        self.col_idx_ref = self.idx_ref[pp]
        # c (see _positions) within [sure_lo, sure_hi): both table offsets are the column's
        eta = self.col_idx_ref - self.col_off
        etaR = self.idxR_ref[pp] - self.col_offR
        margin = 1e-11
        self.sure_lo = np.maximum(-eta, etaR - 1) + margin
        self.sure_hi = np.minimum(1 - eta, etaR) - margin
        cols = [self.column(c, 0, int(self.col_off[c]), int(self.col_offR[c])) for c in range(self.Lr)]
        lo = min(c[0] for c in cols) - 2  # variants reach one sample further at most
        hi = max(c[0] + c[1].shape[0] for c in cols) + 2
        self.pad = max(0, -lo)  # zeros before a row's first input sample in the block buffer
        self.rows_extra = -(-(self.pad + hi) // self.Mr)  # buffer rows beyond the block's
        self.groups = [self._group(cols[a : a + _GROUP], a) for a in range(0, self.Lr, _GROUP)]
        self._typed: dict = {}
        self._torch: dict = {}  # (device, precision) -> the regular groups' matrices as tensors
        self._lock = threading.Lock()

    def column(self, c: int, dn: int, off: int, offR: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(lo, taps, delta taps) of column c for a sample at n = base_c + dn with left and right
        table offsets off, offR: resampy's w = win[o + i step] + eta delta[o + i step] over
        resampy's wings, eta at the column's exact time (see the module docstring); taps[i]
        multiplies input lo + i relative to the row's start. The delta taps are +delta on the
        left wing, -delta on the right (the right eta moves opposite to the left one)."""
        ph, step, nwin = int(self.col_phase[c]), self.index_step, self.win.shape[0]
        shift = dn * self.scale * self.num_table  # n one lower: the table position one sample on
        eta = (self.idx_ref[ph] - shift) - off
        etaR = (self.idxR_ref[ph] + shift) - offR
        n = int(self.col_base[c]) + dn
        i = np.arange((nwin - off) // step)
        k = np.arange((nwin - offR) // step)
        lo = n - i.shape[0] + 1
        h = np.zeros(i.shape[0] + k.shape[0])
        d = np.zeros_like(h)
        li, ri = off + i * step, offR + k * step
        h[n - lo - i] = self.win[li] + eta * self.delta[li]
        d[n - lo - i] = self.delta[li]
        h[n + 1 - lo + k] = self.win[ri] + etaR * self.delta[ri]
        d[n + 1 - lo + k] = -self.delta[ri]
        return lo, h, d

    def _group(self, cols: list, first: int) -> tuple:
        """(first column, G, pieces): the columns' common window split at row boundaries of
        the block buffer; a piece (s, c0, c1, H, D) multiplies buffer rows q + s, samples
        c0:c1, by H (c1 - c0, G) and D (float64; float32 copies are made per use)."""
        lo = min(c[0] for c in cols)
        hi = max(c[0] + c[1].shape[0] for c in cols)
        H = np.zeros((hi - lo, len(cols)))
        D = np.zeros_like(H)
        for i, (clo, h, d) in enumerate(cols):
            H[clo - lo : clo - lo + h.shape[0], i] = h
            D[clo - lo : clo - lo + h.shape[0], i] = d
        pieces = []
        a, b = self.pad + lo, self.pad + hi
        assert a >= 0 and b <= self.rows_extra * self.Mr, "taps beyond the block buffer's margins"
        while a < b:
            s = a // self.Mr
            e = min(b, (s + 1) * self.Mr)
            rows = slice(a - self.pad - lo, e - self.pad - lo)
            pieces.append((s, a - s * self.Mr, e - s * self.Mr, H[rows], D[rows]))
            a = e
        return first, len(cols), pieces

    def matrices(self, precision: str, keys: tuple | None = None) -> list:
        """The groups' pieces as the products take them (built once per precision): float32
        [H | D] in one product, or float64 H and float32 D (the drift term needs no more).
        keys: irregular samples' columns (c, dn, off, offR) instead of the regular ones."""
        with self._lock:
            if (precision, keys) not in self._typed:
                if keys is None:
                    groups = self.groups
                else:
                    cols = [self.column(*key) for key in keys]
                    groups = [self._group(cols[a : a + _GROUP], a) for a in range(0, len(cols), _GROUP)]
                if len(self._typed) > 64:  # irregular sets repeat from block to block; bound the rest
                    self._typed = {k: v for k, v in self._typed.items() if k[1] is None}
                self._typed[precision, keys] = [(first, G, _typed(pieces, precision))
                                                for first, G, pieces in groups]
            return self._typed[precision, keys]


def _typed(pieces: list, precision: str) -> list:
    if precision == "float32":
        return [(s, c0, c1, np.ascontiguousarray(np.hstack([H, D]), np.float32), None)
                for s, c0, c1, H, D in pieces]
    return [(s, c0, c1, np.ascontiguousarray(H), np.ascontiguousarray(D, np.float32))
            for s, c0, c1, H, D in pieces]


_PLANS: dict = {}
_PLANS_LOCK = threading.Lock()


def plan(sr_in: int, sr_out: int, filter: str = "kaiser_best") -> Plan:
    """The Plan for these rates and filter, built on first use (see `supported`)."""
    key = (int(sr_in), int(sr_out), filter)
    with _PLANS_LOCK:
        if key not in _PLANS:
            _PLANS[key] = Plan(*key)
        return _PLANS[key]


class _Work:
    """One call's block buffers, reused from block to block (rows: the most per block)."""

    def __init__(self, pl: Plan, rows: int, precision: str) -> None:
        size = (rows + pl.rows_extra) * pl.Mr
        self.precision = precision
        self.buf = np.empty(size, precision)
        self.buf32 = np.empty(size, np.float32) if precision == "float64" else None
        self.Y = np.empty((rows, pl.Lr), precision)
        self.Z = np.empty((rows, pl.Lr), np.float32)
        self.c = np.empty(rows * pl.Lr)
        self.t = np.arange(rows * pl.Lr, dtype=np.float64)
        self.tr = np.empty(rows * pl.Lr)
        self._tmp: dict = {}

    def tmp(self, shape: tuple, dtype: type, i: int) -> np.ndarray:
        key = (shape, dtype, i)
        if key not in self._tmp:
            self._tmp[key] = np.empty(shape, dtype)
        return self._tmp[key]


def _matmul(X: np.ndarray, A: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = X @ A in row chunks of at most _MAX_MNK multiply-adds each: OpenBLAS runs
    a product that small on the calling thread, whatever its thread count (a threaded
    product in a prefetch thread beside the model's threads is many times slower)."""
    B, K = X.shape
    N = A.shape[1]
    R = max(1, _MAX_MNK // (K * N))
    nb = B // R
    if nb > 1:  # one call: numpy loops over the stack of (R, K) @ (K, N) products in C
        np.matmul(X[: nb * R].reshape(nb, R, K), A, out=out[: nb * R].reshape(nb, R, N))
    elif nb == 1:
        np.matmul(X[:R], A, out=out[:R])
    if nb * R < B:
        np.matmul(X[nb * R :], A, out=out[nb * R :])
    return out


def _products(groups: list, X: np.ndarray, X32: np.ndarray | None, Y: np.ndarray, Z: np.ndarray,
              w: _Work) -> None:
    """Y, Z (B, ncols) = taps . x and delta taps . x for the block's B rows, group by group."""
    B = Y.shape[0]
    for first, G, pieces in groups:
        for i, (s, c0, c1, A, D) in enumerate(pieces):
            if D is None:  # float32: [taps | delta taps] in one product
                yz = _matmul(X[s : s + B, c0:c1], A, w.tmp((B, 2 * G), A.dtype, min(i, 1)))
                y, z = yz[:, :G], yz[:, G:]
            else:
                y = _matmul(X[s : s + B, c0:c1], A, w.tmp((B, G), A.dtype, min(i, 1)))
                z = _matmul(X32[s : s + B, c0:c1], D, w.tmp((B, G), D.dtype, min(i, 1)))
            if i == 0:
                Y[:, first : first + G] = y
                Z[:, first : first + G] = z
            else:
                Y[:, first : first + G] += y
                Z[:, first : first + G] += z


def _checked_columns(pl: Plan, n_in: int) -> slice | np.ndarray:
    """Columns whose samples' integer positions may differ from the column's own: those
    at an exact integer time (r_p = 0: n may come out one lower) and those whose exact
    table positions lie within resampy's float64 drift of an integer (table offsets may
    come out one lower), for times up to n_in. Elsewhere the drift, at most ~3 ulp of the
    time (|t / ratio| 4e-16 samples, scaled by num_table), cannot cross an integer."""
    drift = 8e-16 * (n_in + 1.0) * pl.num_table + 1e-9  # table units; generous
    near = lambda v: np.abs(v - np.round(v)) <= drift  # noqa: E731
    r0 = ((pl.col_phase * pl.M) % pl.L) == 0
    idxR = (pl.scale - pl.scale * (((pl.col_phase * pl.M) % pl.L) / pl.L)) * pl.num_table
    bad = r0 | near(pl.col_idx_ref) | near(idxR)
    if drift * pl.L >= 0.5 * pl.num_table:  # times so long that n itself may drift anywhere
        bad[:] = True
    cols = np.flatnonzero(bad)
    if cols.size == 0:
        return slice(0, 0)
    step = cols[1] - cols[0] if cols.size > 1 else 1
    if np.array_equal(cols, np.arange(cols[0], cols[-1] + 1, step)):
        return slice(int(cols[0]), int(cols[-1]) + 1, int(step))  # a view, not a gather
    return cols


def _positions(pl: Plan, q0: int, rows: int, checked, w: _Work) -> tuple:
    """resampy's per-sample positions for block rows q0 .. q0 + rows (its float64 arithmetic):
    c (rows, Lr), each sample's left table position minus its column's exact one (in table
    units), and the irregular samples (row, column, dn, off, offR): those whose n - base or
    table offsets differ from their column's, with c then taken from their own exact time."""
    K = pl.scale * pl.num_table  # num_table is a power of two: fl(d * K) = fl(scale d) * num_table
    m = rows * pl.Lr
    tr, c = w.tr[:m], w.c[:m]
    np.add(w.t[:m], q0 * pl.Lr, out=tr)  # the output times, exact integers in float64
    tr *= pl.increment  # resampy's t_out: the float64 integer times the float64 increment
    np.floor(tr, out=c)
    np.subtract(tr, c, out=c)
    c *= K  # resampy's idx = frac * num_table, exactly
    c = c.reshape(rows, pl.Lr)
    c -= pl.col_idx_ref
    none = (np.empty(0, np.int64),) * 5
    if isinstance(checked, slice) and checked.start == checked.stop:
        return c, none
    # A sample is regular where c keeps both table positions on its column's entries (with
    # a margin for c's one rounding and the right position's, ~2 ulp(num_table)); c == 0 is
    # its column's exact position. The others: resampy's arithmetic, sample by sample.
    cc = c[:, checked]  # a strided view where the checked columns are evenly spaced
    sure = ((cc >= pl.sure_lo[checked]) & (cc < pl.sure_hi[checked])) | (cc == 0)
    if sure.all():
        return c, none
    r, j = np.nonzero(~sure)
    col = np.arange(pl.Lr)[checked][j]
    tr = ((q0 + r) * pl.Lr + col).astype(np.float64) * pl.increment
    n = np.floor(tr)
    frac = pl.scale * (tr - n)
    off = np.floor(frac * pl.num_table)
    offR = np.floor((pl.scale - frac) * pl.num_table)
    dn = (n - (q0 + r) * pl.Mr - pl.col_base[col]).astype(np.int64)
    bad = (dn != 0) | (off != pl.col_off[col]) | (offR != pl.col_offR[col])
    r, col, dn = r[bad], col[bad], dn[bad]
    c[r, col] += dn * K  # n one lower: the variant's exact position is one sample on
    return c, (r, col, dn, off[bad].astype(np.int64), offR[bad].astype(np.int64))


def _block(pl: Plan, x: np.ndarray, residual: np.ndarray | None, q0: int, rows: int,
           precision: str, checked: np.ndarray) -> np.ndarray:
    """Outputs of rows q0 .. q0 + rows as a flat array (rows * Lr,) (float64 or float32)."""
    dtype = np.dtype(precision)
    n_in = x.shape[0]
    start = q0 * pl.Mr - pl.pad
    size = (rows + pl.rows_extra) * pl.Mr
    a, b = max(0, start), min(n_in, start + size)
    buf = np.zeros(size, dtype)
    if b > a:
        buf[a - start : b - start] = x[a:b]
        if residual is not None:
            buf[a - start : b - start] += residual[a:b]
    X = buf.reshape(-1, pl.Mr)
    X32 = None
    if precision == "float64":  # the drift term's float32 input (the residual is below its needs)
        if x.dtype == np.float32:
            buf32 = np.zeros(size, np.float32)
            buf32[a - start : b - start] = x[a:b]
        else:
            buf32 = buf.astype(np.float32)
        X32 = buf32.reshape(-1, pl.Mr)
    Y, Z = _products(pl.matrices(precision), X, X32, rows, pl.Lr, precision)
    c, (r, col, dn, off, offR) = _positions(pl, q0, rows, checked)
    y = Y + c * Z
    if r.shape[0]:
        # samples the rounding moved across a table entry or an input sample: their own taps
        keys = np.stack([col, dn, off, offR], 1)
        uniq, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.ravel()
        key_t = tuple(tuple(int(v) for v in k) for k in uniq)
        Yv, Zv = _products(pl.matrices(precision, key_t), X, X32, rows, len(key_t), precision)
        y[r, col] = Yv[r, which] + c[r, col] * Zv[r, which]
    return y.ravel()


def _block(pl: Plan, x: np.ndarray, residual: np.ndarray | None, q0: int, rows: int,
           checked, w: _Work) -> np.ndarray | None:
    """Outputs of rows q0 .. q0 + rows, flat (rows * Lr,) float64; None where the block's
    input is not finite (resampy's loop then computes it: NaN and inf reach exactly the
    outputs resampy's taps reach, not the whole window of a product)."""
    n_in = x.shape[0]
    start = q0 * pl.Mr - pl.pad
    size = (rows + pl.rows_extra) * pl.Mr
    a, b = max(0, start), min(n_in, start + size)
    bufs = [w.buf[:size]] + ([] if w.buf32 is None else [w.buf32[:size]])
    for buf in bufs:
        buf[: a - start] = 0
        buf[b - start :] = 0
        buf[a - start : b - start] = x[a:b]
    if residual is not None:
        bufs[0][a - start : b - start] += residual[a:b]
    if not np.isfinite(bufs[0].sum()):  # also where a huge finite input overflows the sum
        return None
    X = bufs[0].reshape(-1, pl.Mr)
    X32 = bufs[1].reshape(-1, pl.Mr) if len(bufs) > 1 else None  # the drift term's (float32)
    Y, Z = w.Y[:rows], w.Z[:rows]
    _products(pl.matrices(w.precision), X, X32, Y, Z, w)
    c, (r, col, dn, off, offR) = _positions(pl, q0, rows, checked, w)
    if r.shape[0]:  # read before c is overwritten below
        cr = c[r, col]
    c *= Z
    c += Y
    if r.shape[0]:
        # samples the rounding moved across a table entry or an input sample: their own taps
        keys = np.stack([col, dn, off, offR], 1)
        uniq, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.ravel()
        key_t = tuple(tuple(int(v) for v in k) for k in uniq)
        Yv = np.empty((rows, len(key_t)), Y.dtype)
        Zv = np.empty((rows, len(key_t)), np.float32)
        _products(pl.matrices(w.precision, key_t), X, X32, Yv, Zv, w)
        c[r, col] = Yv[r, which] + cr * Zv[r, which]
    return c.ravel()


def resample(x: np.ndarray, sr_in: float, sr_out: float, filter: str = "kaiser_best",
             precision: str | None = None, out_dtype: type | None = None,
             residual: np.ndarray | None = None) -> np.ndarray:
    """resampy.resample(x, sr_in, sr_out, filter=filter) along the last axis, fast.

    x: (..., n) float samples (channels along the leading axes, time last: resampy's
    default axis=-1). precision: the arithmetic, "float32" or "float64"; None: float64 for
    float64 input, else float32 (what resampy does for the input's dtype in a fresh
    process). Returns (..., int(n * sr_out / sr_in)) as `out_dtype` (default: precision).
    residual (float64 only; 1-D x): added to x in float64 a block at a time (a float32
    signal plus what it lost, never held whole in float64).
    Polyphase where `supported`, else resampy's own loop; a block with non-finite input
    runs resampy's loop too (NaN and inf reach exactly the outputs resampy's taps reach).
    See the module docstring for the precision against resampy.
    """
    x = np.asarray(x)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"Invalid sample rates: sr_orig={sr_in}, sr_new={sr_out}")
    if precision is None:
        precision = "float64" if x.dtype == np.float64 else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown resampling precision {precision!r}; known: {', '.join(PRECISIONS)}")
    out_dtype = np.dtype(out_dtype or precision)
    if x.ndim == 0:
        raise ValueError("resample takes (..., n) audio, got a scalar")
    if residual is not None and (precision != "float64" or residual.shape != x.shape or x.ndim != 1):
        raise ValueError("a residual goes with float64 precision and a 1-D signal of its length")
    if x.ndim > 1:
        flat = x.reshape(-1, x.shape[-1])
        ys = [resample(ch, sr_in, sr_out, filter, precision, out_dtype) for ch in flat]
        return np.stack(ys).reshape(*x.shape[:-1], -1)
    if sr_in == sr_out:  # resampy: a copy
        return (x.astype(np.float64) + residual if residual is not None else x).astype(out_dtype)
    n_in = x.shape[0]
    n_out = int(n_in * float(sr_out) / float(sr_in))
    if n_out < 1:
        raise ValueError(f"Input signal length={n_in} is too small to resample from {sr_in}->{sr_out}")
    if not supported(sr_in, sr_out, filter):
        return resampy_loop(x, sr_in, sr_out, filter, precision, out_dtype, residual)
    pl = plan(sr_in, sr_out, filter)
    out = np.empty(n_out, out_dtype)
    rows = max(16, _BLOCK_OUT // pl.Lr)
    total = -(-n_out // pl.Lr)
    checked = _checked_columns(pl, n_in)
    w = _Work(pl, rows, precision)
    for q0 in range(0, total, rows):
        r = min(rows, total - q0)
        t0, t1 = q0 * pl.Lr, min(n_out, (q0 + r) * pl.Lr)
        y = _block(pl, x, residual, q0, r, checked, w)
        if y is None:
            y = resampy_loop(x, sr_in, sr_out, filter, precision, precision, residual, (t0, t1))
        out[t0:t1] = y[: t1 - t0]
    return out


# Output samples per block of resampy's loop (a few MB of float64 work, whatever the length).
_LOOP_BLOCK = 1 << 16


def resampy_loop(x: np.ndarray, sr_in: float, sr_out: float, filter: str = "kaiser_best",
                 precision: str | None = None, out_dtype: type | None = None,
                 residual: np.ndarray | None = None, span: tuple[int, int] | None = None) -> np.ndarray:
    """resampy's own loop on a 1-D signal, in a chosen arithmetic: its exact samples.

    resampy 0.4's kernel is a numba gufunc compiled per dtype on first use, and once its
    float64 loop exists numpy runs float32 input through it too: the same call gives
    float32-accumulated samples in a fresh process (what crepe and openl3 get) and
    float64-accumulated ones after any float64 call. Here the kernel runs directly, so
    `precision` ("float32"/"float64"; None: float64 for float64 input, else float32)
    alone decides. The samples equal resampy.resample(x.astype(precision)) in a fresh
    process, length int(n * sr_out / sr_in); returned as `out_dtype` (default: precision).
    It runs in blocks of _LOOP_BLOCK output samples, each with the filter's full support
    around it, which gives the same numbers as one call in bounded memory; `residual`
    (float64 only, same length as x) is added to each block of x first. span: only
    outputs t0 <= t < t1.
    """
    from resampy.filters import get_filter
    from resampy.interpn import _resample_loop_s  # resampy 0.4.x (pinned): the loop its gufunc runs

    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resampy_loop takes 1-D audio, got shape {x.shape}")
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"invalid sample rates {sr_in} -> {sr_out}")
    if precision is None:
        precision = "float64" if x.dtype == np.float64 else "float32"
    dtype = np.dtype(precision)
    out_dtype = np.dtype(out_dtype or dtype)
    # resampy.resample's set-up, step for step (the same float64 numbers)
    ratio = float(sr_out) / sr_in
    n_in, n_out = x.shape[0], int(x.shape[0] * float(sr_out) / float(sr_in))
    if n_out < 1:
        raise ValueError(f"Input signal length={n_in} is too small to resample from {sr_in}->{sr_out}")
    win, num_table, _ = get_filter(filter)
    if ratio < 1:
        win = ratio * win
    delta = np.diff(win, append=win[-1])
    scale = min(1.0, ratio)
    increment = 1.0 / ratio
    if residual is not None and (dtype != np.float64 or residual.shape != x.shape):
        raise ValueError("a residual goes with float64 precision and a signal of its length")
    # Blocks of output samples, each computed from the input around it: output sample t
    # reads input samples n - support < i <= n + support around n = int(t * increment).
    # With all of them in the block, and the block's start subtracted exactly (an integer
    # <= t * increment), each sample is the same sum of the same terms as in one call,
    # without one call's (n_out,) float64 time array or a float64 copy of the input.
    support = win.shape[0] // int(scale * num_table) + 1
    t_start, t_end = span or (0, n_out)
    out = np.empty(t_end - t_start, out_dtype)
    for t0 in range(t_start, t_end, _LOOP_BLOCK):
        t = np.arange(t0, min(t_end, t0 + _LOOP_BLOCK)) * increment
        a, b = max(0, int(t[0]) - support), min(n_in, int(t[-1]) + support + 2)
        xb = x[a:b].astype(dtype)
        if residual is not None:
            xb += residual[a:b]
        y = np.zeros(t.shape[0], dtype)
        _resample_loop_s(xb, t - a, win, delta, num_table, scale, y)
        out[t0 - t_start : t0 - t_start + t.shape[0]] = y
    return out


# -- torch (the same products on the run's device) --------------------------------------------
_TORCH_BLOCK_OUT = 1 << 20  # larger blocks on a GPU: fewer, larger products


def resample_torch(x, sr_in: int, sr_out: int, filter: str = "kaiser_best", precision: str | None = None,
                   block_out: int | None = None):
    """`resample` for a 1-D torch tensor, computed on its device (e.g. CUDA): the same taps,
    positions and irregular samples as the NumPy path, the products in torch.

    x: (n,) float32 or float64 tensor. precision as in `resample` (None: the tensor's
    dtype). Returns a (int(n * sr_out / sr_in),) tensor of dtype `precision` on x's device.
    float32 products run in IEEE float32 (TF32 is switched off around them). Rates that
    `supported` refuses, and blocks with non-finite input, run resampy's loop on the CPU.
    """
    import torch

    if x.ndim != 1:
        raise ValueError(f"resample_torch takes 1-D audio, got shape {tuple(x.shape)}")
    if precision is None:
        precision = "float64" if x.dtype == torch.float64 else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown resampling precision {precision!r}; known: {', '.join(PRECISIONS)}")
    tdt = torch.float64 if precision == "float64" else torch.float32
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"Invalid sample rates: sr_orig={sr_in}, sr_new={sr_out}")
    if sr_in == sr_out:
        return x.to(tdt)
    n_in = x.shape[0]
    n_out = int(n_in * float(sr_out) / float(sr_in))
    if n_out < 1:
        raise ValueError(f"Input signal length={n_in} is too small to resample from {sr_in}->{sr_out}")
    if not supported(sr_in, sr_out, filter):
        y = resampy_loop(x.detach().cpu().numpy(), sr_in, sr_out, filter, precision)
        return torch.from_numpy(y).to(x.device)
    pl = plan(sr_in, sr_out, filter)
    dev = x.device
    rows = max(16, (block_out or _TORCH_BLOCK_OUT) // pl.Lr)
    total = -(-n_out // pl.Lr)
    rows = min(rows, total)
    checked = _checked_columns(pl, n_in)
    mats = _torch_mats(pl, precision, None, dev)
    xs = x.to(tdt)
    x32 = x.to(torch.float32) if precision == "float64" else None
    consts = {k: torch.as_tensor(getattr(pl, k), device=dev)
              for k in ("col_idx_ref", "sure_lo", "sure_hi", "col_base", "col_off", "col_offR")}
    out = torch.empty(n_out, dtype=tdt, device=dev)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for q0 in range(0, total, rows):
            r = min(rows, total - q0)
            t0, t1 = q0 * pl.Lr, min(n_out, (q0 + r) * pl.Lr)
            y = _torch_block(pl, xs, x32, q0, r, checked, mats, consts, precision)
            if y is None:
                xn = x.detach().cpu().numpy()
                y = torch.from_numpy(resampy_loop(xn, sr_in, sr_out, filter, precision, None, None,
                                                  (t0, t1))).to(dev)
            out[t0:t1] = y[: t1 - t0]
    finally:
        torch.set_float32_matmul_precision(prec)
    return out


def _torch_mats(pl: Plan, precision: str, keys: tuple | None, dev) -> list:
    import torch

    key = (str(dev), precision)
    with pl._lock:
        cached = pl._torch.get(key) if keys is None else None
    if cached is None:
        to = lambda a: None if a is None else torch.from_numpy(a).to(dev)  # noqa: E731
        cached = [(first, G, [(s, c0, c1, to(A), to(D)) for s, c0, c1, A, D in pieces])
                  for first, G, pieces in pl.matrices(precision, keys)]
        if keys is None:
            with pl._lock:
                pl._torch[key] = cached
    return cached


def _torch_products(groups: list, X, X32, B: int, ncols: int):
    import torch

    Y = torch.empty((B, ncols), dtype=X.dtype, device=X.device)
    Z = torch.empty((B, ncols), dtype=torch.float32, device=X.device)
    for first, G, pieces in groups:
        for i, (s, c0, c1, A, D) in enumerate(pieces):
            if D is None:
                yz = X[s : s + B, c0:c1] @ A
                y, z = yz[:, :G], yz[:, G:]
            else:
                y, z = X[s : s + B, c0:c1] @ A, X32[s : s + B, c0:c1] @ D
            if i == 0:
                Y[:, first : first + G] = y
                Z[:, first : first + G] = z
            else:
                Y[:, first : first + G] += y
                Z[:, first : first + G] += z
    return Y, Z


def _torch_block(pl: Plan, x, x32, q0: int, rows: int, checked, mats: list, k: dict, precision: str):
    """`_block` in torch: (rows * Lr,) outputs, or None where the input is not finite."""
    import torch

    dev = x.device
    n_in = x.shape[0]
    start = q0 * pl.Mr - pl.pad
    size = (rows + pl.rows_extra) * pl.Mr
    a, b = max(0, start), min(n_in, start + size)
    buf = torch.zeros(size, dtype=x.dtype, device=dev)
    buf[a - start : b - start] = x[a:b]
    if not bool(torch.isfinite(buf.sum())):
        return None
    X = buf.view(-1, pl.Mr)
    X32 = None
    if x32 is not None:
        buf32 = torch.zeros(size, dtype=torch.float32, device=dev)
        buf32[a - start : b - start] = x32[a:b]
        X32 = buf32.view(-1, pl.Mr)
    Y, Z = _torch_products(mats, X, X32, rows, pl.Lr)
    # resampy's positions, as in _positions (float64 on the device: the same IEEE operations)
    K = pl.scale * pl.num_table
    tr = torch.arange(q0 * pl.Lr, (q0 + rows) * pl.Lr, dtype=torch.float64, device=dev) * pl.increment
    c = ((tr - torch.floor(tr)) * K).view(rows, pl.Lr) - k["col_idx_ref"]
    cols = torch.arange(pl.Lr, device=dev)[checked]
    irregular = None
    if cols.numel():
        cc = c[:, cols]
        sure = ((cc >= k["sure_lo"][cols]) & (cc < k["sure_hi"][cols])) | (cc == 0)
        if not bool(sure.all()):
            r, j = torch.nonzero(~sure, as_tuple=True)
            col = cols[j]
            trs = ((q0 + r) * pl.Lr + col).to(torch.float64) * pl.increment
            n = torch.floor(trs)
            frac = pl.scale * (trs - n)
            off = torch.floor(frac * pl.num_table).long()
            offR = torch.floor((pl.scale - frac) * pl.num_table).long()
            dn = (n - (q0 + r) * pl.Mr - k["col_base"][col]).long()
            bad = (dn != 0) | (off != k["col_off"][col]) | (offR != k["col_offR"][col])
            if bool(bad.any()):
                r, col, dn, off, offR = r[bad], col[bad], dn[bad], off[bad], offR[bad]
                c[r, col] += dn.to(torch.float64) * K
                irregular = (r, col, dn, off, offR)
    cr = None if irregular is None else c[irregular[0], irregular[1]]
    y = Y.to(torch.float64) + c * Z.to(torch.float64)
    if irregular is not None:
        r, col, dn, off, offR = irregular
        keys = torch.stack([col, dn, off, offR], 1)
        uniq, which = torch.unique(keys, dim=0, return_inverse=True)
        key_t = tuple(tuple(int(v) for v in kk) for kk in uniq.tolist())
        Yv, Zv = _torch_products(_torch_mats(pl, precision, key_t, dev), X, X32, rows, len(key_t))
        y[r, col] = Yv[r, which].to(torch.float64) + cr * Zv[r, which].to(torch.float64)
    return y.reshape(-1).to(x.dtype)
