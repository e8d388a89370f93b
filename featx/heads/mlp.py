"""A small torch MLP classifier that behaves like any scikit-learn estimator.

Training runs on the GPU when there is one (``device="auto"``); the fitted weights are kept as
numpy arrays, so a fitted head pickles, clones and predicts anywhere, without torch and without a
GPU. All randomness (initialization, shuffling, dropout) comes from one seeded generator: the same
``random_state`` gives the same model on the same device, and the global torch RNG is untouched.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.heads._weights import class_weight_vector, encode_class_weight
from featx.splits import stratified_holdout

logger = logging.getLogger(__name__)


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """Multi-layer perceptron (ReLU, dropout) trained with AdamW on the cross-entropy.

    Parameters
    ----------
    hidden_sizes : tuple of int, default=(512,)
        Width of each hidden layer; ``()`` is a softmax regression.
    dropout : float, default=0.0
        Dropout probability after each hidden layer.
    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay (weights only, not biases).
    lr : float, default=1e-3
        Learning rate.
    max_epochs : int, default=100
    batch_size : int, default=256
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of each class, stop when its loss has not improved for
        ``patience`` epochs and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
    patience : int, default=10
    class_weight : dict, "balanced" or None, default=None
        Class weights of the cross-entropy.
    random_state : int, RandomState or None, default=None
        Seed of initialization, shuffling, dropout and the validation split.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Attributes
    ----------
    coefs_ : list of ndarray
        Weight matrix of each layer, shape (fan_out, fan_in).
    intercepts_ : list of ndarray
    classes_ : ndarray
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch whose weights were kept (the last one without early stopping).
    loss_curve_ : list of float
        Training loss per epoch.
    validation_loss_curve_ : list of float
        Validation loss per epoch (empty without early stopping).
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, y = make_blobs(n_samples=200, centers=3, n_features=8, random_state=0)
    >>> mlp = MLPClassifier(hidden_sizes=(32,), lr=1e-2, max_epochs=30, random_state=0)
    >>> mlp.fit(X, y).score(X, y) > 0.9
    True
    """

    _parameter_constraints: dict = {
        "hidden_sizes": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "random_state": ["random_state"],
        "device": [str],
    }

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (512,),
        dropout: float = 0.0,
        weight_decay: float = 1e-4,
        lr: float = 1e-3,
        max_epochs: int = 100,
        batch_size: int = 256,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 10,
        class_weight: dict | str | None = None,
        random_state: int | np.random.RandomState | None = None,
        device: str = "auto",
    ) -> None:
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train on X (minus the early-stopping hold-out) and keep the best epoch's weights."""
        from featx.heads._torch import cpu_threads, resolve_device

        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "MLPClassifier needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        sizes = [int(h) for h in np.asarray(self.hidden_sizes, dtype=np.int64).ravel()]
        if any(h < 1 for h in sizes):
            raise ValueError(f"hidden_sizes must be positive integers; got {self.hidden_sizes!r}")
        K = len(self.classes_)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        device = resolve_device(self.device)
        dims = [X.shape[1], *sizes, K]
        widest = max(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
        work = min(self.batch_size, len(y_enc)) * widest
        with cpu_threads(device, work):
            self._train(X, y_enc, dims, seed, device)
        self.solver_ = f"minibatches in memory ({device})"
        return self

    def fit_stream(self, stream: Any) -> MLPClassifier:
        """Train from a :class:`~featx.features.RowStream` too large for memory.

        Each epoch visits the stream's blocks in a seeded random order, mixes the rows of as many
        blocks as a quarter of the budget holds, and draws shuffled minibatches from them (a
        store sorted by class therefore mixes less than an in-memory shuffle when the budget is
        small against the store); the early-stopping hold-out (``validation_fraction`` of
        each class, at most what a quarter of the memory budget holds) is read into memory.
        """
        from featx.heads._torch import cpu_threads, resolve_device

        self.classes_ = np.unique(stream.y)
        if len(self.classes_) < 2:
            raise ValueError("MLPClassifier needs samples of at least 2 classes")
        self.n_features_in_ = int(stream.dim)
        sizes = [int(h) for h in np.asarray(self.hidden_sizes, dtype=np.int64).ravel()]
        K = len(self.classes_)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        device = resolve_device(self.device)
        dims = [int(stream.dim), *sizes, K]
        widest = max(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
        y_enc = np.searchsorted(self.classes_, stream.y).astype(np.int64)
        with cpu_threads(device, min(self.batch_size, len(y_enc)) * widest):
            self._train(None, y_enc, dims, seed, device, stream=stream)
        self.solver_ = (
            f"minibatches from disk: {stream.n} rows, mixed "
            f"{max(1, stream.rows_in_budget(4.0))} at a time ({device})"
        )
        return self

    def _train(
        self, X: np.ndarray | None, y_enc: np.ndarray, dims: list[int], seed: int, device,
        stream: Any = None,
    ) -> None:  # fmt: skip
        import torch
        import torch.nn.functional as F

        K = dims[-1]
        g_cpu = torch.Generator().manual_seed(seed)
        g_dev = g_cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed)

        train, val = np.arange(len(y_enc)), np.zeros(0, dtype=np.int64)
        if self.early_stopping:
            train, val = stratified_holdout(y_enc, self.validation_fraction, seed)
            if len(val) == 0:
                logger.info("mlp: too few samples per class to hold out; no early stopping")
                train = np.arange(len(y_enc))
        bsz = min(self.batch_size, len(train))
        if stream is None:
            Xt = torch.from_numpy(np.ascontiguousarray(X[train])).to(device)
            yt = torch.from_numpy(y_enc[train].astype(np.int64)).to(device)
            Xv = torch.from_numpy(np.ascontiguousarray(X[val])).to(device)

            def epoch_batches():
                perm = torch.randperm(len(train), generator=g_cpu).to(device)
                for s in range(0, len(train), bsz):
                    idx = perm[s : s + bsz]
                    yield Xt[idx], yt[idx]

        else:
            cap = stream.rows_in_budget(4.0)
            if len(val) > cap:  # keep the hold-out within a quarter of the budget
                val = np.sort(np.random.default_rng(seed).choice(val, cap, replace=False))
            Xv = torch.from_numpy(stream.take(val)[0]).to(device)
            blocks = stream.subset(train)
            enc_train = y_enc[train]

            # Rows are mixed in a buffer of blocks drawn from random places of the store (a
            # quarter of the budget), since stores are sorted by key and keys often by class.
            blk = max(1, min(blocks.block_rows, blocks.matrix.block_rows))
            group = max(1, blocks.rows_in_budget(4.0) // blk)

            def epoch_batches():
                order = int(torch.randint(0, 2**31 - 1, (1,), generator=g_cpu))
                starts = np.random.default_rng(order).permutation(np.arange(0, blocks.n, blk))
                for g in range(0, len(starts), group):
                    sel = np.concatenate(
                        [np.arange(s, min(s + blk, blocks.n)) for s in starts[g : g + group]]
                    )
                    Xb = blocks.matrix.read(blocks.rows[sel])
                    Xb = torch.from_numpy(blocks._apply(Xb)).to(device)
                    yb = torch.from_numpy(enc_train[sel]).to(device)
                    perm = torch.randperm(len(yb), generator=g_cpu).to(device)
                    for a in range(0, len(yb), bsz):
                        idx = perm[a : a + bsz]
                        yield Xb[idx], yb[idx]

        yv = torch.from_numpy(y_enc[val].astype(np.int64)).to(device)
        cw = encode_class_weight(self.class_weight, self.classes_)
        w = class_weight_vector(y_enc[train], K, cw)
        weight = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=device)

        Ws, bs = [], []
        for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(dims) - 2
            bound = (1.0 if last else np.sqrt(6.0)) / np.sqrt(fan_in)  # He init before ReLU
            W = (torch.rand(fan_out, fan_in, generator=g_cpu) * 2 - 1) * bound
            Ws.append(W.to(device).requires_grad_())
            bs.append(torch.zeros(fan_out, device=device, requires_grad=True))
        opt = torch.optim.AdamW(
            [
                {"params": Ws, "weight_decay": self.weight_decay},
                {"params": bs, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )

        def forward(x, train_mode: bool):
            h = x
            for j, (W, b) in enumerate(zip(Ws, bs, strict=True)):
                h = F.linear(h, W, b)
                if j < len(Ws) - 1:
                    h = torch.relu(h)
                    if train_mode and self.dropout > 0:
                        keep = 1.0 - self.dropout
                        mask = torch.empty_like(h).bernoulli_(keep, generator=g_dev)
                        h = h * mask / keep
            return h

        n = len(train)
        self.loss_curve_: list[float] = []
        self.validation_loss_curve_: list[float] = []
        best_loss, best_state, since = np.inf, None, 0
        self.best_epoch_ = 0
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):  # noqa: B007  (read after the loop)
            total = torch.zeros((), device=device)
            for xb, yb in epoch_batches():
                loss = F.cross_entropy(forward(xb, True), yb, weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(yb)
            self.loss_curve_.append(float(total) / n)
            if len(val):
                with torch.no_grad():
                    vloss = float(F.cross_entropy(forward(Xv, False), yv, weight=weight))
                self.validation_loss_curve_.append(vloss)
                if vloss < best_loss - 1e-4:
                    best_loss, since, self.best_epoch_ = vloss, 0, epoch
                    best_state = [t.detach().clone() for t in (*Ws, *bs)]
                else:
                    since += 1
                    if since >= self.patience:
                        break
            if not np.isfinite(self.loss_curve_[-1]):
                raise ValueError(
                    f"MLPClassifier diverged (loss {self.loss_curve_[-1]}) at epoch {epoch}; "
                    "lower lr or standardize the features"
                )
        self.n_iter_ = epoch
        if best_state is None:
            best_state = [t.detach() for t in (*Ws, *bs)]
            self.best_epoch_ = epoch
        L = len(Ws)
        self.coefs_ = [t.cpu().numpy().astype(np.float32, copy=True) for t in best_state[:L]]
        self.intercepts_ = [t.cpu().numpy().astype(np.float32, copy=True) for t in best_state[L:]]
        logger.info(
            "mlp: %d epochs on %s, kept epoch %d (train loss %.4f)",
            epoch,
            device,
            self.best_epoch_,
            self.loss_curve_[self.best_epoch_ - 1],
        )

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        h = np.asarray(X, dtype=np.float64)
        for j, (W, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
            h = h @ W.T.astype(np.float64) + b
            if j < len(self.coefs_) - 1:
                np.maximum(h, 0.0, out=h)
        return h

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits (shape (n,) for two classes: class 1 minus class 0)."""
        Z = self._logits(X)
        return Z[:, 1] - Z[:, 0] if Z.shape[1] == 2 else Z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the logits, columns in the order of ``classes_``."""
        Z = self._logits(X)
        E = np.exp(Z - Z.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        Z = self._logits(X)
        m = Z.max(axis=1, keepdims=True)
        return Z - m - np.log(np.exp(Z - m).sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The class with the largest logit."""
        idx = self._logits(X).argmax(axis=1)
        return self.classes_[idx]
