"""A fast solver for L2-regularized squared-hinge (L2-loss) linear SVMs, one-vs-rest, in torch.

The objective is LinearSVC's, for every class ``k`` at once, with the bias left unpenalized::

    ||w_k||^2 / 2  +  C * sum_i s_i * max(0, 1 - y_ik (x_i . w_k + b_k))^2       y_ik = +-1

The squared hinge is piecewise quadratic, so on a fixed active set (the rows inside the margin)
the objective is a least-squares problem and a Newton step solves it exactly; once the active set
stops changing Newton has converged. Each step is a linear system ``H p = -g`` with the
generalized Hessian ``H = I/C + 2 X_A^T S X_A`` (plus the bias row), solved by conjugate gradients
for all classes at once (each class its own columns: two ``n x d x k`` products per CG step).

Dense embeddings are strongly correlated, which makes ``X^T X`` ill-conditioned and plain CG (or
L-BFGS, or liblinear's coordinate descent) slow as ``C`` grows. The solver therefore works in the
eigenbasis of the centred Gram matrix ``(X - mean)^T (X - mean)``, computed once per problem: there
the Gram matrix is diagonal and the Hessian of each class is close to diagonal, and CG is
preconditioned with the exact diagonal of every class's Hessian in that basis (as the logreg
solver preconditions L-BFGS with its Hessian's diagonal). The rotation is orthogonal, so the
norm ``||w||`` and hence the objective are unchanged; coefficients are rotated back at the end.

Along a Newton direction the objective is a convex piecewise-quadratic function of the step,
minimized exactly by a safeguarded one-dimensional Newton iteration on elementwise work only.
Successive values of ``C`` are warm-started from the previous solution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class HingeProblem:
    """Device-resident data of a one-vs-rest problem in the rotated, centred basis.

    The layout is class-major (coefficients ``(k, d)``, scores ``(k, n)``) with the data kept as
    ``X`` and ``X^T`` both contiguous: every product is then a row-major GEMM, which on the CPU
    is 2-8x faster than the transposed ones for these skinny shapes.
    """

    X: Any  # (n, d): (X - mean) @ V, fitted rows
    XT: Any  # (d, n) contiguous
    X2: Any  # (n, d) squares, for the Hessian diagonal (None: computed in chunks)
    Y: Any  # (k, n) +-1
    s: Any  # (n,) sample weights or None
    S: float  # sum of weights
    V: Any  # (d, d) rotation
    mean: Any  # (d,) centre
    _blocks: dict[int, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.Y.shape[0])

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def block_data(self, r: int) -> tuple[Any, Any]:
        """(Xb, Xb^T): the top-``r`` directions plus a column of ones, both contiguous."""
        import torch

        if r not in self._blocks:
            XbT = torch.cat([self.XT[self.d - r :], torch.ones_like(self.XT[:1])], dim=0)
            self._blocks[r] = (XbT.T.contiguous(), XbT.contiguous())
        return self._blocks[r]


def targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    """+-1 one-vs-rest targets (n, k): one column (class 1 positive) for two classes."""
    if n_classes == 2:
        return np.where(y == 1, 1.0, -1.0)[:, None]
    Y = -np.ones((len(y), n_classes))
    Y[np.arange(len(y)), y] = 1.0
    return Y


def rotation(X):
    """(mean, V): the centre and the eigenvectors of the centred Gram matrix of ``X``.

    Any orthogonal basis gives the same solution; this one makes the Hessians nearly diagonal.
    The Gram matrix of all rows (validation rows included: they change the preconditioner, not
    the solution) serves every later fit on a subset.
    """
    import torch

    mean = X.mean(dim=0)
    Xc = X - mean
    G = Xc.T.contiguous() @ Xc
    _, V = torch.linalg.eigh(G)  # orthogonal to working precision: exact enough for a basis
    return mean, V


def make_problem(Xr, y: np.ndarray, n_classes: int, sw, V, mean) -> HingeProblem:
    """A :class:`HingeProblem` over the rotated rows ``Xr`` (all fitted) with labels ``y``."""
    import torch

    Y = torch.as_tensor(targets(y, n_classes).T.copy(), dtype=Xr.dtype, device=Xr.device)
    s = None if sw is None else torch.as_tensor(sw, dtype=Xr.dtype, device=Xr.device)
    S = float(len(y) if sw is None else np.sum(sw))
    X = Xr.contiguous()
    X2 = X.square() if X.numel() <= (1 << 27) else None  # <= 512 MB in float32
    return HingeProblem(X, X.T.contiguous(), X2, Y, s, S, V, mean)


def _hess_diag(prob: HingeProblem, A):
    """Row ``c`` is the diagonal of ``X^T diag(A[c]) X``: (k, d)."""
    import torch

    if prob.X2 is not None:
        return A @ prob.X2
    out = torch.zeros(A.shape[0], prob.d, dtype=A.dtype, device=A.device)
    step = max(1, (1 << 24) // max(prob.d, 1))
    for a in range(0, prob.n, step):
        out.addmm_(A[:, a : a + step], prob.X[a : a + step].square())
    return out


@dataclass
class HingeState:
    """Coefficients in the rotated basis and the fitted rows' scores ``Z = W X^T + b``."""

    W: Any  # (k, d)
    b: Any  # (k,)
    Z: Any  # (k, n)


def zero_state(prob: HingeProblem) -> HingeState:
    import torch

    kw = {"dtype": prob.X.dtype, "device": prob.X.device}
    return HingeState(
        torch.zeros(prob.k, prob.d, **kw),
        torch.zeros(prob.k, **kw),
        torch.zeros(prob.k, prob.n, **kw),
    )


def state_from(prob: HingeProblem, W, b) -> HingeState:
    import torch

    return HingeState(W.clone(), b.clone(), torch.addmm(b[:, None], W, prob.XT))


def newton(
    prob: HingeProblem,
    state: HingeState,
    C: float,
    *,
    max_iter: int = 50,
    tol: float = 1e-4,
    cg_tol: float = 0.1,
    max_cg: int = 500,
    block: int = 128,
    refresh: float = 0.05,
) -> tuple[HingeState, int, int, str]:
    """Minimize the objective (divided by ``C * S``) from ``state``.

    Stops when the largest absolute gradient entry of ``objective / (C * S)`` (the mean-scaled
    objective, as the logreg solver's stopping rule) is at most ``tol`` for every class. Each
    Newton system is solved by CG to ``cg_tol`` times its starting residual, preconditioned by
    the exact Hessian on the ``block`` largest-variance directions and the bias, and by its
    diagonal elsewhere.

    Returns
    -------
    (state, newton iterations, CG iterations, status) with status ``"converged"`` or
    ``"max_iter"``.
    """
    import torch

    X, XT = prob.X, prob.XT
    Y, s, S = prob.Y, prob.s, prob.S
    lam = 1.0 / C
    r = min(block, prob.d)
    W, b, Z = state.W.clone(), state.b.clone(), state.Z.clone()
    status = "max_iter"
    n_cg = 0
    it = 0
    act_pre = Dw = Db = L = None
    for it in range(1, max_iter + 1):  # noqa: B007
        act = (Y * Z) < 1.0
        A = act.to(Z.dtype) if s is None else act * s
        R = A * (Z - Y)  # half of d loss / d Z
        gW = torch.addmm(W, R, X, beta=lam, alpha=2.0)
        gb = 2.0 * R.sum(dim=1)
        gmax = torch.maximum(gW.abs().amax(dim=1), gb.abs()) / S  # (k,)
        todo = gmax > tol
        if not bool(todo.any()):
            status = "converged"
            it -= 1
            break
        # -- preconditioned CG on H p = -g, every class its own row. The preconditioner is
        # rebuilt only when the active set moved by more than `refresh` of its size.
        moved = math.inf if act_pre is None else float((act != act_pre).sum())
        if moved > refresh * max(float(act.sum()), 1.0):
            act_pre = act
            Dw = _hess_diag(prob, A).mul_(2.0).add_(lam).reciprocal_()
            Db = (2.0 * A.sum(dim=1) + lam * 1e-3).reciprocal_()
            L = _block_factor(prob, A, lam, r) if r else None

        def precond(Rw, Rb, Dw=Dw, Db=Db, L=L):
            Qw, Qb = Rw * Dw, Rb * Db
            if L is not None:
                _block_solve(L, Rw, Rb, Qw, Qb)
            return Qw, Qb

        # Rows outside the margin of every class add nothing to a Hessian product: the CG
        # products read only the others (X is read once per product, so that is the cost).
        Xa, XaT, Aa = _active_rows(X, XT, A, act)
        Pw = torch.zeros_like(W)
        Pb = torch.zeros_like(b)
        Rw = torch.where(todo[:, None], -gW, 0.0)
        Rb = torch.where(todo, -gb, 0.0)
        Qw, Qb = precond(Rw, Rb)
        Dirw, Dirb = Qw.clone(), Qb.clone()
        rz = (Rw * Qw).sum(dim=1) + Rb * Qb
        goal = (cg_tol * cg_tol) * ((Rw * Rw).sum(dim=1) + Rb * Rb)
        for _ in range(max_cg):
            n_cg += 1
            U = torch.addmm(Dirb[:, None], Dirw, XaT).mul_(Aa)
            HDw = torch.addmm(Dirw, U, Xa, beta=lam, alpha=2.0)
            HDb = 2.0 * U.sum(dim=1)
            dHd = (Dirw * HDw).sum(dim=1) + Dirb * HDb
            alpha = torch.where(dHd > 0, rz / dHd.clamp_min(1e-30), 0.0)
            Pw.addcmul_(Dirw, alpha[:, None])
            Pb.addcmul_(Dirb, alpha)
            Rw.addcmul_(HDw, alpha[:, None], value=-1.0)
            Rb = Rb - HDb * alpha
            rr = (Rw * Rw).sum(dim=1) + Rb * Rb
            if bool((rr <= goal).all()):
                break
            Qw, Qb = precond(Rw, Rb)
            rz_new = (Rw * Qw).sum(dim=1) + Rb * Qb
            beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), 0.0)
            rz = rz_new
            Dirw = Qw.addcmul_(Dirw, beta[:, None])
            Dirb = Qb + Dirb * beta
        # -- exact line search along (Pw, Pb): phi(t) is convex piecewise quadratic per class
        Qz = torch.addmm(Pb[:, None], Pw, XT)  # change of Z per unit step
        wp = (W * Pw).sum(dim=1)
        pp = (Pw * Pw).sum(dim=1)
        t = _line_search(Z, Qz, Y, s, lam, wp, pp)
        W.addcmul_(Pw, t[:, None])
        b.addcmul_(Pb, t)
        Z.addcmul_(Qz, t[:, None])
    return HingeState(W, b, Z), it, n_cg, status


def _active_rows(X, XT, A, act, dense: float = 0.85):
    """(X, X^T, A) restricted to the rows inside the margin of some class.

    Below ``dense`` of the rows active the gathered copies cost less than the products they
    save; above it the full arrays serve as they are.
    """
    rows = act.any(dim=0)
    n_a = int(rows.sum())
    if n_a > dense * rows.numel():
        return X, XT, A
    idx = rows.nonzero().squeeze(1)
    Xa = X.index_select(0, idx)
    return Xa, Xa.T.contiguous(), A.index_select(1, idx)


def _block_factor(prob: HingeProblem, A, lam: float, r: int):
    """Cholesky factors of every class's Hessian block on the top-``r`` directions and the bias.

    The last ``r`` rotated columns are the largest-variance directions (``eigh`` sorts its
    eigenvalues ascending). The Hessian couples them most, so CG's preconditioner solves them
    exactly and the rest by their diagonal. Returns a (k, r+1, r+1) batch of lower factors.
    """
    import torch

    Xb, XbT = prob.block_data(r)
    k = A.shape[0]
    Hb = torch.empty(k, r + 1, r + 1, dtype=Xb.dtype, device=Xb.device)
    for c in range(k):
        torch.mm(XbT * A[c], Xb, out=Hb[c])
    Hb.mul_(2.0)
    eye = torch.eye(r + 1, dtype=Xb.dtype, device=Xb.device)
    eye[r, r] = 1e-3
    Hb.add_(eye * lam)
    L, info = torch.linalg.cholesky_ex(Hb)
    if bool((info != 0).any()):  # numerically indefinite: lift the diagonal a little
        Hb.add_(eye * (1e-4 * float(Hb.diagonal(dim1=1, dim2=2).abs().max())))
        L = torch.linalg.cholesky(Hb)
    return L


def _block_solve(L, Rw, Rb, Qw, Qb) -> None:
    """Overwrite the block part of (Qw, Qb) with the exact block solve of (Rw, Rb)."""
    import torch

    r = L.shape[1] - 1
    d = Rw.shape[1]
    rhs = torch.cat([Rw[:, d - r :], Rb[:, None]], dim=1).unsqueeze(2)  # (k, r+1, 1)
    sol = torch.cholesky_solve(rhs, L).squeeze(2)  # (k, r+1)
    Qw[:, d - r :] = sol[:, :r]
    Qb.copy_(sol[:, r])


def _line_search(Z, Qz, Y, s, lam, wp, pp, iters: int = 30):
    """The step ``t >= 0`` minimizing ``phi_c(t)`` for every class ``c``: (k,) tensor.

    ``phi_c'(t) = lam (wp + t pp) + 2 sum_i s_i [y (z + t q) < 1] (z + t q - y) q`` is monotone;
    Newton on it, safeguarded by a bracket (bisection when Newton leaves it).
    """
    import torch

    k = Z.shape[0]
    t = torch.ones(k, dtype=Z.dtype, device=Z.device)
    lo = torch.zeros_like(t)
    hi = torch.full_like(t, float("inf"))
    Qs = Qz if s is None else Qz * s
    for _ in range(iters):
        Zt = torch.addcmul(Z, Qz, t[:, None])
        Aq = ((Y * Zt) < 1.0) * Qs
        d1 = lam * (wp + t * pp) + 2.0 * (Aq * (Zt - Y)).sum(dim=1)
        d2 = lam * pp + 2.0 * (Aq * Qz).sum(dim=1)
        lo = torch.where(d1 < 0, t, lo)
        hi = torch.where(d1 > 0, t, hi)
        t_new = t - torch.where(d2 > 0, d1 / d2.clamp_min(1e-30), 0.0)
        bad = (t_new <= lo) | (t_new >= hi) | ~torch.isfinite(t_new)
        mid = torch.where(torch.isfinite(hi), 0.5 * (lo + hi), 2.0 * t)
        t_new = torch.where(bad, mid, t_new)
        done = bool(((t_new - t).abs() <= 1e-7 * t.abs().clamp_min(1e-12)).all())
        t = t_new
        if done:
            break
    return t.clamp_min(0.0)


def unrotate(prob: HingeProblem, state: HingeState) -> tuple[np.ndarray, np.ndarray]:
    """(coef (k, d), intercept (k,)) in the original feature space, float64."""
    coef = state.W @ prob.V.T  # (k, d)
    intercept = state.b - coef @ prob.mean
    return coef.double().cpu().numpy(), intercept.double().cpu().numpy()
