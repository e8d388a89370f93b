"""Classic text features: TF-IDF of word and character n-grams, fitted on training rows only.

:class:`TfidfFeatures` is a scikit-learn transformer from raw texts to a feature matrix. It is
the ``tfidf`` feature group of a text store that keeps its texts (docs/store.md): the group step
of a head (:class:`featx.heads.groups.GroupFeatures`) fits it on the training rows of each split,
so no test text ever shapes the vocabulary or the IDF weights.

Two outputs:

* ``dim=0``: the sparse TF-IDF matrix itself (word 1-2-grams and char 2-5-grams, sublinear TF,
  each block L2-normalized), for heads that take sparse input (``linsvc``-style linear heads);
* ``dim=N`` (the default, :data:`DEFAULT_DIM`): a dense latent-semantic reduction (truncated SVD
  of the TF-IDF matrix to N dimensions), which every featx head takes and which fuses with an
  encoder's dense vectors. docs/heads.md's "text features" section says why this is the default.

The fitted state is plain arrays (the vocabularies as strings, the IDF weights, the SVD basis),
so a bundle saves it without pickle and :meth:`transform` needs nothing else.

Examples
--------
>>> texts = ["what is a cat", "where is paris", "what is a dog", "where is rome"] * 3
>>> t = TfidfFeatures(dim=0, char=False, min_df=1).fit(texts)
>>> t.transform(["what is rome"]).shape[0]
1
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

#: Components of the dense reduction (0: keep the sparse TF-IDF matrix).
DEFAULT_DIM = 512
#: Vocabulary cap per analyzer (most frequent n-grams kept).
DEFAULT_MAX_FEATURES = 100_000


def _token_pattern() -> str:
    return r"(?u)\b\w+\b"  # keeps one-letter words ("a", "I") and digits: cues in short texts


class TfidfFeatures(TransformerMixin, BaseEstimator):
    """TF-IDF of word n-grams (and character n-grams), optionally reduced to a dense basis.

    Parameters
    ----------
    word_ngrams : tuple of int, default=(1, 2)
    char : bool, default=True
        Add character n-grams within word boundaries (``char_ngrams``).
    char_ngrams : tuple of int, default=(2, 5)
    min_df : int, default=2
        Ignore n-grams seen in fewer training texts.
    max_features : int, default=100000
        Vocabulary cap per analyzer.
    lowercase : bool, default=True
    dim : int, default=512
        Components of the truncated SVD; 0 keeps the sparse matrix.
    random_state : int, default=0
    """

    def __init__(
        self,
        word_ngrams: tuple[int, int] = (1, 2),
        char: bool = True,
        char_ngrams: tuple[int, int] = (2, 5),
        min_df: int = 2,
        max_features: int = DEFAULT_MAX_FEATURES,
        lowercase: bool = True,
        dim: int = DEFAULT_DIM,
        random_state: int = 0,
    ) -> None:
        self.word_ngrams = word_ngrams
        self.char = char
        self.char_ngrams = char_ngrams
        self.min_df = min_df
        self.max_features = max_features
        self.lowercase = lowercase
        self.dim = dim
        self.random_state = random_state

    # -- the analyzers --------------------------------------------------------------------
    def _vectorizers(self, vocabs: list[np.ndarray] | None = None) -> list[Any]:
        from sklearn.feature_extraction.text import CountVectorizer

        common = {"lowercase": self.lowercase, "dtype": np.float32}
        specs = [
            {
                "analyzer": "word",
                "ngram_range": tuple(self.word_ngrams),
                "token_pattern": _token_pattern(),
            }
        ]
        if self.char:
            specs.append({"analyzer": "char_wb", "ngram_range": tuple(self.char_ngrams)})
        out = []
        for i, spec in enumerate(specs):
            if vocabs is None:
                n = max(1, int(self.min_df))
                out.append(
                    CountVectorizer(**common, **spec, min_df=n, max_features=self.max_features)
                )
            else:
                vocab = {str(t): j for j, t in enumerate(vocabs[i])}
                out.append(CountVectorizer(**common, **spec, vocabulary=vocab))
        return out

    def _weigh(self, counts: Any, idf: np.ndarray) -> Any:
        from sklearn.preprocessing import normalize

        c = counts.tocsr().astype(np.float32)
        c.data = 1.0 + np.log(c.data)  # sublinear TF
        c = c.multiply(idf[None, :]).tocsr()
        return normalize(c, norm="l2", copy=False)

    def _sparse(self, texts: Any) -> Any:
        import scipy.sparse as sp

        texts = _as_texts(texts)
        blocks = []
        for i, vec in enumerate(self._vectorizers(self.vocabularies_)):
            blocks.append(self._weigh(vec.transform(texts), self.idfs_[i]))
        # each analyzer's block has unit norm; the whole row then has norm sqrt(#blocks)
        return sp.hstack(blocks, format="csr", dtype=np.float32) / np.sqrt(len(blocks))

    # -- scikit-learn API -----------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> TfidfFeatures:
        import scipy.sparse as sp

        texts = _as_texts(X)
        if len(texts) == 0:
            raise ValueError("TF-IDF needs at least one training text")
        vocabs, idfs, blocks = [], [], []
        n = len(texts)
        for vec in self._vectorizers():
            try:
                counts = vec.fit_transform(texts)
            except ValueError:  # every n-gram below min_df: fall back to all of them
                vec.set_params(min_df=1)
                counts = vec.fit_transform(texts)
            df = np.asarray((counts > 0).sum(axis=0)).ravel()
            idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
            terms = np.empty(len(vec.vocabulary_), dtype=object)
            for t, j in vec.vocabulary_.items():
                terms[j] = t
            vocabs.append(terms.astype(str))
            idfs.append(idf)
            blocks.append(self._weigh(counts, idf))
        self.vocabularies_ = vocabs
        self.idfs_ = idfs
        Z = sp.hstack(blocks, format="csr", dtype=np.float32) / np.sqrt(len(blocks))
        self.n_terms_ = int(Z.shape[1])
        self.components_ = None
        if self.dim:
            k = int(min(self.dim, Z.shape[1] - 1, n - 1))
            if k >= 1:
                self.components_ = _top_components(Z, k, self.random_state)
        self.n_features_out_ = (
            self.n_terms_ if self.components_ is None else int(self.components_.shape[0])
        )
        return self

    def transform(self, X: Any) -> Any:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "idfs_")
        Z = self._sparse(X)
        if self.components_ is None:
            return Z
        return np.asarray(Z @ self.components_.T, dtype=np.float32)

    @property
    def sparse_output(self) -> bool:
        return not self.dim

    # -- bundle state: arrays only --------------------------------------------------------
    def _featx_state_(self) -> dict[str, Any]:
        state = dict(self.get_params())
        state["word_ngrams"] = list(self.word_ngrams)
        state["char_ngrams"] = list(self.char_ngrams)
        if hasattr(self, "idfs_"):
            state["vocabularies_"] = [np.asarray(v, dtype=str) for v in self.vocabularies_]
            state["idfs_"] = list(self.idfs_)
            state["components_"] = self.components_
            state["n_terms_"] = self.n_terms_
            state["n_features_out_"] = self.n_features_out_
        return state

    @classmethod
    def _featx_from_state_(cls, state: dict[str, Any]) -> TfidfFeatures:
        params = {k: state[k] for k in cls._get_param_names() if k in state}
        params["word_ngrams"] = tuple(params.get("word_ngrams", (1, 2)))
        params["char_ngrams"] = tuple(params.get("char_ngrams", (2, 5)))
        obj = cls(**params)
        if "idfs_" in state:
            obj.vocabularies_ = [np.asarray(v, dtype=str) for v in state["vocabularies_"]]
            obj.idfs_ = [np.asarray(v, dtype=np.float32) for v in state["idfs_"]]
            comp = state.get("components_")
            obj.components_ = None if comp is None else np.asarray(comp, dtype=np.float32)
            obj.n_terms_ = int(state["n_terms_"])
            obj.n_features_out_ = int(state["n_features_out_"])
        return obj


#: Up to this many training texts the SVD goes through the (n, n) Gram matrix (exact, fast).
GRAM_MAX_ROWS = 6000


def _top_components(Z: Any, k: int, random_state: int) -> np.ndarray:
    """The top ``k`` right singular vectors of sparse ``Z`` (uncentred, as LSA), (k, terms)."""
    n = Z.shape[0]
    if n <= GRAM_MAX_ROWS:  # eigenvectors of Z Z^T: one small dense eigh
        G = np.asarray((Z @ Z.T).toarray(), dtype=np.float64)
        w, U = np.linalg.eigh(G)
        top = np.argsort(w)[::-1][:k]
        w, U = np.clip(w[top], 1e-12, None), U[:, top]
        V = np.asarray(Z.T @ U).T / np.sqrt(w)[:, None]
        signs = np.sign(V[np.arange(len(V)), np.abs(V).argmax(axis=1)])  # deterministic signs
        return (V * signs[:, None]).astype(np.float32)
    from sklearn.decomposition import TruncatedSVD

    svd = TruncatedSVD(n_components=k, n_iter=3, random_state=random_state)
    return svd.fit(Z).components_.astype(np.float32)


def _as_texts(X: Any) -> list[str]:
    texts = getattr(X, "texts", X)  # TextRows or a sequence of str
    arr = np.asarray(texts, dtype=object).ravel()
    return ["" if t is None else str(t) for t in arr]
