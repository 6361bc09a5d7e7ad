"""KPL step 1: exact top-k retrieval of a class's descriptions and the text proxies.

For image features X (N, D) and class c's description embeddings E_c (M_c, D), all with unit
rows, the relevance of description j is its mean cosine similarity to the images,
``s_c[j] = (1/N) * sum_i X_i . E_c[j]``. KPL keeps the ``k_c = min(k, M_c)`` most relevant
rows and uses their renormalised mean as the class's text proxy,
``w_c = normalise(mean_{j in top_k(s_c)} E_c[j])``; the proxies side by side form
``W_t = [w_1 .. w_C]`` (D, C).

This module also turns user inputs (numpy arrays or tensors) into float32 tensors and rejects
malformed ones with a one-line message, so the other math modules can assume clean tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kpl.errors import KplError, UsageError

# Float32 rounding leaves unit vectors within ~2e-7 of norm 1; features kept in float16 are
# off by up to ~5e-4. Anything beyond this bound was not normalised in float32.
UNIT_NORM_TOL = 1e-5
# Past this many entries (256 MB in float32), a (rows, D) check or an (N, M_c) similarity matrix
# is computed in row blocks, so a million images never need a second matrix of their size.
SCORE_CHUNK_ELEMENTS = 1 << 26


def as_matrix(values, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """A finite, contiguous float32 (rows, D) tensor with unit rows, on ``device``.

    Rows already unit to float32 precision are used bit for bit: renormalising them would only
    add ~1e-7 of rounding noise, which the image_ot proxy loop amplifies to ~1e-4. If any row is
    further off (e.g. features stored in float16), every row is renormalised, as the paper code
    normalises features right after encoding. The result may share memory with the input;
    nothing in kpl writes into it.
    """
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        array = np.asarray(values)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise KplError(f"{name} must hold numbers (got dtype {array.dtype})")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 2:
        raise KplError(f"{name} must be a 2-D (rows, dim) array, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise KplError(f"{name} is empty (shape {tuple(tensor.shape)}); give at least one row")
    tensor = tensor.to(device=device, dtype=torch.float32).contiguous()
    _check_rows(tensor, name)
    if float((tensor.norm(dim=1) - 1).abs().max()) > UNIT_NORM_TOL:
        tensor = F.normalize(tensor, dim=1)
    return tensor


def _check_rows(tensor: torch.Tensor, name: str) -> None:
    """Raise a KplError for NaN/inf or all-zero rows, which have no direction."""
    # Row blocks: (N, D) boolean temporaries would cost half of a million-image X again.
    n = tensor.shape[0]
    rows = max(1, SCORE_CHUNK_ELEMENTS // (8 * tensor.shape[1]))
    nonfinite = torch.zeros(n, dtype=torch.bool, device=tensor.device)
    zero_rows = torch.zeros(n, dtype=torch.bool, device=tensor.device)
    for start in range(0, n, rows):
        block = tensor[start:start + rows]
        nonfinite[start:start + rows] = (~torch.isfinite(block)).any(dim=1)
        zero_rows[start:start + rows] = (block == 0).all(dim=1)
    bad = nonfinite.nonzero().flatten()
    if bad.numel():
        raise KplError(
            f"{name} has NaN/inf in {bad.numel()} row(s), first row {int(bad[0])}; "
            "re-encode those inputs or drop them"
        )
    zero = zero_rows.nonzero().flatten()
    if zero.numel():
        raise KplError(f"{name} has {zero.numel()} all-zero row(s), first row {int(zero[0])}; drop them")


def prepare_inputs(
    image_features, class_embeddings: Sequence, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Validate and convert: X (N, D) and a list of C tensors E_c (M_c, D), all float32."""
    x = as_matrix(image_features, "image_features", device)
    if isinstance(class_embeddings, (np.ndarray, torch.Tensor)) or len(class_embeddings) == 0:
        raise UsageError(
            "class_embeddings must be a non-empty list with one (M_c, D) array per class; "
            "use kpl.method.retrieval.split_by_class to split a flat (M, D) array"
        )
    classes = []
    for c, emb in enumerate(class_embeddings):
        if emb is None or (emb.numel() if isinstance(emb, torch.Tensor) else np.size(emb)) == 0:
            raise KplError(f"class {c} has no description embeddings; add descriptions or drop the class")
        e = as_matrix(emb, f"class_embeddings[{c}]", device)
        if e.shape[1] != x.shape[1]:
            raise KplError(
                f"class_embeddings[{c}] has dim {e.shape[1]} but image_features has dim {x.shape[1]}; "
                "encode images and descriptions with the same CLIP model"
            )
        classes.append(e)
    return x, classes


def split_by_class(embeddings, description_class, num_classes: int | None = None) -> list[np.ndarray]:
    """Split a flat (M, D) array into C per-class arrays, keeping file order within each class.

    ``description_class`` (M,) gives the class index of every row, as in the golden npz files.
    """
    emb = np.asarray(embeddings)
    cls = np.asarray(description_class).astype(np.int64)
    count = int(cls.max()) + 1 if num_classes is None else int(num_classes)
    return [emb[cls == c] for c in range(count)]


def check_k(k) -> int:
    """k as an int >= 1, or a UsageError saying how to fix it."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be an integer >= 1 (got {k!r}); e.g. --k 8")
    return int(k)


def description_scores(x: torch.Tensor, classes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per class, the (M_c,) mean similarity of each description to the images.

    Computed as ``(X @ E_c.T).mean(0)``, the paper code's order of operations, so selections
    are the paper's bit for bit. The algebraically equal ``X.mean(0) @ E_c.T`` (N times less
    work) rounds differently: on the golden cases the two differ by up to 6e-8 while the
    closest scores within a class are 4e-7 apart, so both happen to select the same sets there,
    but near-duplicate descriptions (paraphrases, shared generic texts) can sit closer than
    that, and there the two forms can rank them differently.

    Past ``SCORE_CHUNK_ELEMENTS`` entries in one (N, M_c) product (a million images), the product
    is summed over row blocks (float64 across blocks) so it never exists whole.
    """
    return [_mean_similarity(x, e) for e in classes]



def _mean_similarity(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if n * e.shape[0] <= SCORE_CHUNK_ELEMENTS:
        return (x @ e.T).mean(dim=0)
    rows = max(1, SCORE_CHUNK_ELEMENTS // (8 * e.shape[0]))
    total = torch.zeros(e.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, n, rows):
        total += (x[start:start + rows] @ e.T).sum(dim=0, dtype=torch.float64)
    return (total / n).to(torch.float32)


def select_top_k(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Per class, the int64 indices of the ``min(k, M_c)`` best descriptions, in topk's order."""
    return [torch.topk(s, min(k, s.shape[0])).indices for s in scores]


def text_proxies(classes: Sequence[torch.Tensor], selected: Sequence[torch.Tensor]) -> torch.Tensor:
    """(D, C) text proxies: column c is the renormalised mean of class c's selected rows."""
    columns = [F.normalize(e[idx].mean(dim=0), dim=0) for e, idx in zip(classes, selected)]
    return torch.stack(columns, dim=1)


def retrieve(
    x: torch.Tensor, classes: Sequence[torch.Tensor], k: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Step 1 in one call: (selected indices per class, (D, C) text proxies W_t)."""
    selected = select_top_k(description_scores(x, classes), check_k(k))
    return selected, text_proxies(classes, selected)
