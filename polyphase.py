"""resampy's band-limited sinc resampling as a polyphase matrix product: resampy's numbers, faster.

resampy 0.4 (`resampy.resample`, pinned) computes every output sample in a scalar loop: for
output t at input time tr = t / ratio it interpolates its windowed-sinc table at the
fractional offsets of tr and sums the taps around int(tr). For integer rates the ratio is
L / M in lowest terms, so output t + L sits M input samples after output t at the same
fractional offset: the taps repeat with period L. Here each phase's taps are computed once,
with resampy's own table interpolation (same filter file, rolloff, scaling, wings and tap
counts), and the filter runs as matrix products over a block of periods (BLAS), in the
arithmetic resampy uses for the input's dtype (float32 or float64 taps and sums). One
per-sample pass (compiled with numba, resampy's own compiler) computes each output's time
as resampy does and adds the drift term below; `resample_torch` does the same in torch.

resampy's own times are not exactly periodic: tr = t * (1 / ratio) is rounded in float64,
so a phase's fractional offset drifts by up to ~|tr| * 3.3e-16 samples (4e-10 at 30 s).
resampy's taps are linear in the interpolation factor eta: w = win[i] + eta * delta[i]. So
each output is taken as (the phase's taps at its exact rational time) . x + c_t * (delta
taps) . x, with c_t = this sample's time as resampy computes it (float64) minus the
phase's exact one: the second product is the drift's exact contribution (w is linear in
eta), tiny (|c_t| <= ~4e-10 samples at 30 s), and is summed in float32. Where the rounding
moves a sample across a table entry or an input sample (its integer offsets differ from
its phase's; mostly phases whose exact offsets are integers), that sample's own taps are
used (extra columns). Edges: zeros beyond the signal, which is what resampy's truncated
wings sum.

Precision against resampy, per output sample, with n its taps, S = sum_i |w_i x_i| and
S_delta = sum_i |delta_i x_i| over resampy's taps and table slopes, and c_max = 8e-16
(n_in + 1) num_table (the drift bound, in table entries); tested sample by sample in
tests/test_polyphase.py, measured in BENCHMARKS.md:
- float64: |ours - resampy| <= (2 n + 3) eps64 S + (c_max (n + 2) u32 + 1e-11) S_delta:
  the same float64 products summed in another order (BLAS), plus the drift term's float32
  sum (eps64 = 2^-53). Measured: max |ours - resampy| / max |resampy| ~2e-15 (goal: 1e-12), per
  sample <= ~25 eps64 S.
- float32: resampy adds each float64 product into a float32 sum (rounded per tap); ours
  rounds the taps to float32 and sums in float32 (BLAS order, then the drift term):
  |ours - resampy| <= (2 n + 3) u32 S + the same drift term, u32 = 2^-24. Measured per
  sample <= ~13 u32 S, ~4e-7 to 1.3e-6 of max |resampy|: as far as resampy's own float32
  samples are from the exact sums.

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
_BLOCK_OUT = 1 << 16
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
    The block's input is one buffer, `pad` samples before its first row's; row q of the
    matrix the products read is buffer[q Mr : q Mr + width], rows overlapping (a strided
    view), and a group of columns reads one window of at most Mr samples of it.
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
        self.K = self.scale * self.num_table  # table entries per input sample
        g = math.gcd(self.sr_in, self.sr_out)
        self.L, self.M = self.sr_out // g, self.sr_in // g
        L, M = self.L, self.M
        # a row at least _MIN_ROW samples and as wide as a group's window (all taps + spread)
        taps = 2 * (win.shape[0] // self.index_step + 2)
        self.k = max(1, -(-_MIN_ROW // M), -(-(taps + -(-_GROUP * M // L) + 8) // M))
        self.Lr, self.Mr = self.k * L, self.k * M
        # Each phase's exact time: n_p + r_p / L input samples after its period's start; its
        # table positions (float64, resampy's formulas at that exact time) and offsets.
        p = np.arange(L)
        self.n_p = (p * M) // L
        self.frac_p = ((p * M) % L) / L  # fl(r / L)
        frac = self.scale * self.frac_p
        self.idx_ref = frac * self.num_table
        self.idxR_ref = (self.scale - frac) * self.num_table
        pp = np.tile(p, self.k)
        self.col_phase = pp
        self.col_base = np.repeat(np.arange(self.k), L) * M + self.n_p[pp]
        self.col_off = self.idx_ref[pp].astype(np.int64)
        self.col_offR = self.idxR_ref[pp].astype(np.int64)
        self.col_frac = self.frac_p[pp]
        # the drift c (input samples, see _irregular) within [sure_lo, sure_hi): both table
        # offsets are the column's (margin: c's roundings, ~2 ulp(num_table) table entries)
        eta = self.idx_ref[pp] - self.col_off
        etaR = self.idxR_ref[pp] - self.col_offR
        margin = 1e-11
        self.sure_lo = (np.maximum(-eta, etaR - 1) + margin) / self.K
        self.sure_hi = (np.minimum(1 - eta, etaR) - margin) / self.K
        cols = [self.column(c, 0, int(self.col_off[c]), int(self.col_offR[c])) for c in range(self.Lr)]
        lo = min(c[0] for c in cols) - 2  # an irregular sample's taps reach two samples further at most
        hi = max(c[0] + c[1].shape[0] for c in cols) + 2
        self.pad = max(0, -lo)  # buffer samples before the first row's first input sample
        self.width = self.pad + hi  # samples per (overlapping) matrix row
        # Regular columns in groups of G = _GROUP (the last padded with zero columns), their
        # products stored group-major, (group, row, column in group), for the per-sample pass.
        G = self.G = _GROUP
        self.ng = -(-self.Lr // G)
        self.groups = []
        for g in range(self.ng):
            members = np.arange(g * G, min(self.Lr, (g + 1) * G))
            (_, a, b, H, D), = self._groups(cols[g * G : (g + 1) * G], members)  # one group: k fits G
            pad = G - H.shape[1]
            self.groups.append((g, a, b, np.pad(H, ((0, 0), (0, pad))), np.pad(D, ((0, 0), (0, pad)))))
        self._typed: dict = {}
        self._torch: dict = {}  # (device, precision) -> the regular groups' matrices as tensors
        self._lock = threading.Lock()

    def column(self, c: int, dn: int, off: int, offR: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(lo, taps, delta taps) of column c for a sample at n = base_c + dn with left and right
        table offsets off, offR: resampy's w = win[o + i step] + eta delta[o + i step] over
        resampy's wings, eta at the column's exact time (see the module docstring); taps[i]
        multiplies input lo + i relative to the row's start. The delta taps are per input
        sample of drift: K delta on the left wing, -K delta on the right (its eta moves the
        other way)."""
        ph, step, nwin = int(self.col_phase[c]), self.index_step, self.win.shape[0]
        shift = dn * self.K  # n one lower: the table position one sample on
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
        d[n - lo - i] = self.K * self.delta[li]
        h[n + 1 - lo + k] = self.win[ri] + etaR * self.delta[ri]
        d[n + 1 - lo + k] = -self.K * self.delta[ri]
        return lo, h, d

    def _groups(self, cols: list, where: np.ndarray) -> list:
        """Columns in order, cut into groups of at most _GROUP whose common window fits in Mr:
        [(output columns (slice or index array), a, b, H (b - a, G), D)], the window being
        row samples a:b (buffer offsets from the row's start, `pad` included)."""
        out, i = [], 0
        while i < len(cols):
            j, lo, hi = i, cols[i][0], cols[i][0] + cols[i][1].shape[0]
            while j < len(cols) and j - i < _GROUP:
                nlo, nhi = min(lo, cols[j][0]), max(hi, cols[j][0] + cols[j][1].shape[0])
                if nhi - nlo > self.Mr:
                    break
                lo, hi, j = nlo, nhi, j + 1
            assert j > i, "a column wider than a row"
            H = np.zeros((hi - lo, j - i))
            D = np.zeros_like(H)
            for m, (clo, h, d) in enumerate(cols[i:j]):
                H[clo - lo : clo - lo + h.shape[0], m] = h
                D[clo - lo : clo - lo + h.shape[0], m] = d
            a, b = self.pad + lo, self.pad + hi
            assert 0 <= a and b <= self.width, "taps beyond the block buffer's margins"
            idx = where[i:j]
            contiguous = np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))
            out.append((slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx, a, b, H, D))
            i = j
        return out

    def block_rows(self, precision: str) -> tuple[int, int]:
        """(rows per block, rows per product): about _BLOCK_OUT outputs, a multiple of the
        rows that one product of a regular group takes (see _matmul): one call each."""
        K = max(b - a for _, a, b, _, _ in self.groups)
        R = max(1, _MAX_MNK // (K * self.G * (2 if precision == "float32" else 1)))
        return max(R, max(16, _BLOCK_OUT // self.Lr) // R * R), R

    def matrices(self, precision: str, keys: tuple | None = None) -> list:
        """The groups as the products take them (built once per precision): float32 [H | D]
        in one product, or float64 H and float32 D (the drift term needs no more).
        keys: irregular samples' (c, dn, off, offR) instead of the regular columns; their
        groups' output columns index `keys`."""
        with self._lock:
            if (precision, keys) not in self._typed:
                if keys is None:
                    groups = self.groups
                else:
                    groups = self._groups([self.column(*key) for key in keys], np.arange(len(keys)))
                if len(self._typed) > 64:  # irregular sets repeat from block to block; bound the rest
                    self._typed = {k: v for k, v in self._typed.items() if k[1] is None}
                self._typed[precision, keys] = [_typed(g, precision) for g in groups]
            return self._typed[precision, keys]


def _typed(group: tuple, precision: str) -> tuple:
    sel, a, b, H, D = group
    if precision == "float32":
        return sel, a, b, np.ascontiguousarray(np.hstack([H, D]), np.float32), None
    return sel, a, b, np.ascontiguousarray(H), np.ascontiguousarray(D, np.float32)


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

    def __init__(self, pl: Plan, rows: int, precision: str, out_dtype: np.dtype) -> None:
        self.size = (rows - 1) * pl.Mr + pl.width
        self.precision = precision
        self.buf = np.empty(self.size, precision)
        self.buf32 = np.empty(self.size, np.float32) if precision == "float64" else None
        # the regular groups' products, group-major: (group, row, column in group)
        if precision == "float32":  # [taps . x | delta taps . x]
            self.Y, self.Z = np.empty((pl.ng, rows, 2 * pl.G), np.float32), None
        else:
            self.Y, self.Z = np.empty((pl.ng, rows, pl.G)), np.empty((pl.ng, rows, pl.G), np.float32)
        self.flags = np.empty(rows * pl.Lr, np.int64)  # samples the per-sample pass flags
        self.R = 0  # rows per product of a regular group (Plan.block_rows)
        self._tmp: dict = {}

    def tmp(self, shape: tuple, dtype: type, role: str) -> np.ndarray:
        key = (shape, dtype, role)
        if key not in self._tmp:
            self._tmp[key] = np.empty(shape, dtype)
        return self._tmp[key]


_LOCAL = threading.local()


def _work(pl: Plan, rows: int, precision: str, out_dtype: np.dtype) -> _Work:
    """This thread's buffers for (plan, rows, precision, out_dtype), kept from call to call
    (fresh pages cost a page fault each on first write)."""
    cache = getattr(_LOCAL, "work", None)
    if cache is None:
        cache = _LOCAL.work = {}
    key = (pl.sr_in, pl.sr_out, pl.filter, rows, precision, out_dtype.name)
    if key not in cache:
        if len(cache) >= 8:  # a few rate pairs per thread at most; the rest come and go
            cache.pop(next(iter(cache)))
        cache[key] = _Work(pl, rows, precision, out_dtype)
    return cache[key]


def _matmul(X: np.ndarray, A: np.ndarray, out: np.ndarray, R: int = 0) -> np.ndarray:
    """out = X @ A in chunks of R rows (default: the most with at most _MAX_MNK
    multiply-adds): OpenBLAS runs a product that small on the calling thread, whatever
    its thread count (a threaded product in a prefetch thread beside the model's threads
    is many times slower)."""
    B, K = X.shape
    N = A.shape[1]
    R = R or max(1, _MAX_MNK // (K * N))
    nb = B // R
    if nb > 1:  # one call: numpy loops over the stack of (R, K) @ (K, N) products in C
        np.matmul(X[: nb * R].reshape(nb, R, K), A, out=out[: nb * R].reshape(nb, R, N))
    elif nb == 1:
        np.matmul(X[:R], A, out=out[:R])
    if nb * R < B:
        np.matmul(X[nb * R :], A, out=out[nb * R :])
    return out


def _rows(buf: np.ndarray, rows: int, pl: Plan) -> np.ndarray:
    """(rows, width) overlapping rows of the block buffer: row q = buf[q Mr : q Mr + width]."""
    return np.lib.stride_tricks.as_strided(buf, (rows, pl.width), (pl.Mr * buf.itemsize, buf.itemsize),
                                           writeable=False)


def _group_products(X: np.ndarray, X32: np.ndarray | None, A: np.ndarray, D: np.ndarray | None,
                    w: _Work, R: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(taps . x, delta taps . x), each (B, G), for one group's window rows X (B, K)."""
    B = X.shape[0]
    if D is None:  # float32: [taps | delta taps] in one product
        yz = _matmul(X, A, w.tmp((B, A.shape[1]), A.dtype, "y"), R)
        return yz[:, : A.shape[1] // 2], yz[:, A.shape[1] // 2 :]
    return (_matmul(X, A, w.tmp((B, A.shape[1]), A.dtype, "y"), R),
            _matmul(X32, D, w.tmp((B, D.shape[1]), D.dtype, "z"), R))


def _variant_products(groups: list, X: np.ndarray, X32: np.ndarray | None, c: np.ndarray,
                      out: np.ndarray, w: _Work) -> None:
    """Irregular samples' columns: out[:, cols] = taps . x + c * (delta taps . x), (B, nv)."""
    for sel, a, b, A, D in groups:
        y, z = _group_products(X[:, a:b], None if X32 is None else X32[:, a:b], A, D, w)
        out[:, sel] = c[:, sel] * z + y


def _checked_columns(pl: Plan, n_in: int) -> np.ndarray:
    """(Lr,) bool: the columns whose samples' integer positions may differ from the column's
    own: those at an exact integer time (r_p = 0: n may come out one lower) and those whose exact
    table positions lie within resampy's float64 drift of an integer (table offsets may
    come out one lower or higher), for times up to n_in. Elsewhere the drift, at most
    ~3.3e-16 |t / ratio| samples (three roundings: 1 / ratio's two and the product's),
    times K table entries, cannot cross an integer."""
    drift = 8e-16 * (n_in + 1.0) * pl.num_table + 1e-9  # table units; generous
    near = lambda v: np.abs(v - np.round(v)) <= drift  # noqa: E731
    r0 = pl.col_frac == 0
    bad = r0 | near(pl.idx_ref[pl.col_phase]) | near(pl.idxR_ref[pl.col_phase])
    if drift * pl.L >= 0.5 * pl.num_table:  # times so long that n itself may drift anywhere
        bad[:] = True
    return bad


_NONE = (np.empty(0, np.int64),) * 5 + (np.empty(0),)


def _irregular(pl: Plan, q0: int, flagged: np.ndarray) -> tuple:
    """Of the flagged samples (block-local indices q Lr + col that the per-sample pass could
    not clear), those whose integer positions differ from their column's, by resampy's
    float64 arithmetic: (row, column, dn, off, offR, c), c their drift from their own
    exact time."""
    if not flagged.size:
        return _NONE
    r, col = flagged // pl.Lr, flagged % pl.Lr
    tr = ((q0 + r) * pl.Lr + col).astype(np.float64) * pl.increment  # resampy's times
    n = np.floor(tr)
    c = (tr - n) - pl.col_frac[col]
    frac = pl.scale * (tr - n)
    off = np.floor(frac * pl.num_table)
    offR = np.floor((pl.scale - frac) * pl.num_table)
    dn = (n - (q0 + r) * pl.Mr - pl.col_base[col]).astype(np.int64)
    bad = (dn != 0) | (off != pl.col_off[col]) | (offR != pl.col_offR[col])
    # n one lower: the variant's exact time is one sample on
    return (r[bad], col[bad], dn[bad], off[bad].astype(np.int64), offR[bad].astype(np.int64),
            c[bad] + dn[bad])


_FINISH = None


def _finish_kernel():
    """The per-sample pass, compiled with numba (resampy's own compiler: its float64 times
    are the same IEEE operations as resampy's loop). For each output of the block:
    c = (t * increment - floor(t * increment)) - frac[col], the drift from the column's exact
    time; out[q, col] = taps . x + c * (delta taps . x). A checked column's sample is
    flagged (its index q Lr + col in `flags`; the count is returned) unless c keeps both
    its table positions on the column's entries, c in [lo, hi), or c == 0 (its exact time)."""
    global _FINISH
    if _FINISH is None:
        import math

        from numba import njit

        @njit(cache=True, nogil=True)
        def finish(q0, Lr, inc, frac, check, lo, hi, Y, Z, zoff, out, flags):  # pragma: no cover
            ng, rows, G = Y.shape[0], out.shape[0], Y.shape[2] if zoff == 0 else zoff
            nflag = 0
            for q in range(rows):
                base = (q0 + q) * Lr
                for g in range(ng):
                    for i in range(G):
                        col = g * G + i
                        if col >= Lr:
                            break
                        tr = (base + col) * inc
                        c = (tr - math.floor(tr)) - frac[col]
                        if check[col] and not ((c >= lo[col] and c < hi[col]) or c == 0.0):
                            flags[nflag] = q * Lr + col
                            nflag += 1
                        out[q, col] = Y[g, q, i] + c * Z[g, q, zoff + i]
            return nflag

        _FINISH = finish
    return _FINISH


def _block(pl: Plan, x: np.ndarray, residual: np.ndarray | None, q0: int, rows: int,
           checked: np.ndarray, w: _Work, out: np.ndarray) -> bool:
    """Outputs of rows q0 .. q0 + rows into out (rows, Lr); False (nothing written) where
    the block's input is not finite: resampy's loop computes it then (NaN and inf reach
    exactly the outputs resampy's taps reach, not a whole product's window)."""
    n_in = x.shape[0]
    start = q0 * pl.Mr - pl.pad
    size = (rows - 1) * pl.Mr + pl.width
    a, b = max(0, start), min(n_in, start + size)
    inside = a == start and b == start + size
    if inside and residual is None and x.dtype == np.dtype(w.precision):
        X = x[a:b]  # the signal itself, no copy
    else:
        X = w.buf[:size]
        X[: a - start] = 0
        X[b - start :] = 0
        if residual is None:
            X[a - start : b - start] = x[a:b]
        else:
            np.add(x[a:b], residual[a:b], out=X[a - start : b - start], dtype=np.float64)
    if not np.isfinite(X.sum()):  # also where a huge finite input overflows the sum
        return False
    X32 = None
    if w.buf32 is not None:  # float64: the drift term's float32 input (the residual is below its needs)
        if inside and x.dtype == np.float32:
            X32 = x[a:b]
        else:
            X32 = w.buf32[:size]
            X32[: a - start] = 0
            X32[b - start :] = 0
            X32[a - start : b - start] = x[a:b]
        X32 = _rows(X32, rows, pl)
    X = _rows(X, rows, pl)
    # the products (C-contiguous, as the compiled pass is specialized for)
    Y, Z = w.Y, w.Z
    if rows < Y.shape[1]:  # a short signal's one block
        Y = np.empty((pl.ng, rows, Y.shape[2]), Y.dtype)
        Z = None if Z is None else np.empty((pl.ng, rows, pl.G), Z.dtype)
    for g, ga, gb, A, D in pl.matrices(w.precision):
        _matmul(X[:, ga:gb], A, Y[g], w.R)  # float32: [taps | delta taps] in one product
        if D is not None:
            _matmul(X32[:, ga:gb], D, Z[g], w.R)
    Z, zoff = (Y, pl.G) if Z is None else (Z, 0)
    nflag = _finish_kernel()(q0, pl.Lr, pl.increment, pl.col_frac, checked, pl.sure_lo, pl.sure_hi,
                             Y, Z, zoff, out, w.flags)
    r, col, dn, off, offR, cr = _irregular(pl, q0, w.flags[:nflag])
    if r.shape[0]:
        # samples the rounding moved across a table entry or an input sample: their own taps
        keys = np.stack([col, dn, off, offR], 1)
        uniq, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.ravel()
        key_t = tuple(tuple(int(v) for v in k) for k in uniq)
        cv = np.zeros((rows, len(key_t)), np.float32 if w.precision == "float32" else np.float64)
        cv[r, which] = cr
        ov = np.empty((rows, len(key_t)), out.dtype)
        _variant_products(pl.matrices(w.precision, key_t), X, X32, cv, ov, w)
        out[r, col] = ov[r, which]
    return True


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
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    pl = plan(sr_in, sr_out, filter)
    out = np.empty(n_out, out_dtype)
    rows, R = pl.block_rows(precision)
    total = -(-n_out // pl.Lr)
    checked = _checked_columns(pl, n_in)
    w = _work(pl, rows, precision, out_dtype)
    w.R = R
    rows = min(rows, total)
    last = None
    for q0 in range(0, total, rows):
        r = min(rows, total - q0)
        t0, t1 = q0 * pl.Lr, min(n_out, (q0 + r) * pl.Lr)
        if t1 - t0 == r * pl.Lr:  # whole rows: straight into the output
            dest = out[t0:t1].reshape(r, pl.Lr)
        else:
            last = np.empty((r, pl.Lr), out_dtype)
            dest = last
        if not _block(pl, x, residual, q0, r, checked, w, dest):
            out[t0:t1] = resampy_loop(x, sr_in, sr_out, filter, precision, precision, residual, (t0, t1))
        elif dest is last:
            out[t0:t1] = last.ravel()[: t1 - t0]
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
                   block_out: int | None = None, residual=None):
    """`resample` for a 1-D torch tensor, computed on its device (e.g. CUDA): the same taps,
    times and irregular samples as the NumPy path, the products and the per-sample pass in
    torch (one block of 2^20 outputs at a time by default: `block_out`).

    x: (n,) float32 or float64 tensor. precision as in `resample` (None: the tensor's
    dtype); residual (float64 only): an (n,) tensor added to x in float64. Returns an
    (int(n * sr_out / sr_in),) tensor of dtype `precision` on x's device. float32 products
    run in IEEE float32: torch's float32 matmul precision is set to "highest" around them
    (a process-wide setting, restored after). Rates that `supported` refuses, and blocks
    with non-finite input, run resampy's loop on the CPU.
    """
    import torch

    if x.ndim != 1:
        raise ValueError(f"resample_torch takes 1-D audio, got shape {tuple(x.shape)}")
    if precision is None:
        precision = "float64" if x.dtype == torch.float64 else "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown resampling precision {precision!r}; known: {', '.join(PRECISIONS)}")
    tdt = torch.float64 if precision == "float64" else torch.float32
    if residual is not None and (precision != "float64" or tuple(residual.shape) != tuple(x.shape)):
        raise ValueError("a residual goes with float64 precision and a 1-D signal of its length")
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"Invalid sample rates: sr_orig={sr_in}, sr_new={sr_out}")
    if sr_in == sr_out:
        return x.to(tdt) if residual is None else x.to(tdt) + residual.to(x.device, tdt)
    n_in = x.shape[0]
    n_out = int(n_in * float(sr_out) / float(sr_in))
    if n_out < 1:
        raise ValueError(f"Input signal length={n_in} is too small to resample from {sr_in}->{sr_out}")
    xn = (lambda: x.detach().cpu().numpy())  # noqa: E731
    rn = None if residual is None else residual.detach().cpu().numpy()
    if not supported(sr_in, sr_out, filter):
        return torch.from_numpy(resampy_loop(xn(), sr_in, sr_out, filter, precision, None, rn)).to(x.device)
    pl = plan(sr_in, sr_out, filter)
    dev = x.device
    rows = max(16, (block_out or _TORCH_BLOCK_OUT) // pl.Lr)
    total = -(-n_out // pl.Lr)
    rows = min(rows, total)
    checked = _checked_columns(pl, n_in)
    mats = _torch_mats(pl, precision, None, dev)
    xs = x.to(tdt) if residual is None else x.to(tdt) + residual.to(dev, tdt)
    x32 = x.to(torch.float32) if precision == "float64" else None
    consts = {k: torch.as_tensor(getattr(pl, k), device=dev)
              for k in ("col_frac", "sure_lo", "sure_hi", "col_base", "col_off", "col_offR")}
    out = torch.empty(n_out, dtype=tdt, device=dev)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for q0 in range(0, total, rows):
            r = min(rows, total - q0)
            t0, t1 = q0 * pl.Lr, min(n_out, (q0 + r) * pl.Lr)
            y = _torch_block(pl, xs, x32, q0, r, checked, mats, consts, precision)
            if y is None:
                y = torch.from_numpy(resampy_loop(xn(), sr_in, sr_out, filter, precision, None, rn,
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
        cached = [(sel, a, b, to(A), to(D)) for sel, a, b, A, D in pl.matrices(precision, keys)]
        if keys is None:
            with pl._lock:
                pl._torch[key] = cached
    return cached


def _torch_products(groups: list, X, X32, c, out, G: int = 0) -> None:
    """out[:, cols] = taps . x + c * (delta taps . x) per group (a regular group g: columns
    g G .. g G + G, its padding columns dropped; an irregular one: its own columns)."""
    for sel, a, b, A, D in groups:
        if D is None:
            yz = X[:, a:b] @ A
            n = A.shape[1] // 2
            y, z = yz[:, :n], yz[:, n:]
        else:
            y, z = X[:, a:b] @ A, X32[:, a:b] @ D
        if isinstance(sel, int):  # regular
            sel = slice(sel * G, min(out.shape[1], sel * G + G))
            y, z = y[:, : sel.stop - sel.start], z[:, : sel.stop - sel.start]
        out[:, sel] = (c[:, sel] * z + y).to(out.dtype)


def _torch_block(pl: Plan, x, x32, q0: int, rows: int, checked, mats: list, k: dict, precision: str):
    """`_block` in torch: (rows * Lr,) outputs, or None where the input is not finite."""
    import torch

    dev = x.device
    n_in = x.shape[0]
    start = q0 * pl.Mr - pl.pad
    size = (rows - 1) * pl.Mr + pl.width
    a, b = max(0, start), min(n_in, start + size)
    buf = torch.zeros(size, dtype=x.dtype, device=dev)
    buf[a - start : b - start] = x[a:b]
    if not bool(torch.isfinite(buf.sum())):
        return None
    X = buf.as_strided((rows, pl.width), (pl.Mr, 1))
    X32 = None
    if x32 is not None:
        buf32 = torch.zeros(size, dtype=torch.float32, device=dev)
        buf32[a - start : b - start] = x32[a:b]
        X32 = buf32.as_strided((rows, pl.width), (pl.Mr, 1))
    # resampy's times, as in _finish and _irregular (float64 on the device: the same IEEE operations)
    tr = torch.arange(q0 * pl.Lr, (q0 + rows) * pl.Lr, dtype=torch.float64, device=dev) * pl.increment
    c = (tr - torch.floor(tr)).view(rows, pl.Lr) - k["col_frac"]
    cols = torch.as_tensor(np.flatnonzero(checked), device=dev)
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
                c[r, col] += dn.to(torch.float64)
                irregular = (r, col, dn, off, offR)
    if precision == "float32":
        c = c.to(torch.float32)
    y = torch.empty((rows, pl.Lr), dtype=x.dtype, device=dev)
    _torch_products(mats, X, X32, c, y, pl.G)
    if irregular is not None:
        r, col, dn, off, offR = irregular
        keys = torch.stack([col, dn, off, offR], 1)
        uniq, which = torch.unique(keys, dim=0, return_inverse=True)
        key_t = tuple(tuple(int(v) for v in kk) for kk in uniq.tolist())
        cv = torch.zeros((rows, len(key_t)), dtype=c.dtype, device=dev)
        cv[r, which] = c[r, col]
        ov = torch.empty((rows, len(key_t)), dtype=x.dtype, device=dev)
        _torch_products(_torch_mats(pl, precision, key_t, dev), X, X32, cv, ov)
        y[r, col] = ov[r, which]
    return y.reshape(-1)
