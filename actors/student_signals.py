"""Forward-pass signals of the student for selection: the loss of the reference answer (gt_loss_high)
and BADGE gradient embeddings. Pure torch over a causal LM; the StudentScorerActor calls them.

BADGE for sequences (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower
Bounds", Sec. 3, extended to token sequences): the gradient of the mean NLL of the student's own answer
with respect to the output layer W (vocab x hidden) is G = sum_t g_t h_t^T / T, with g_t = softmax(z_t) -
onehot(y_t) and h_t the last hidden state. G is never materialised: it is sketched as S_v G S_h^T with
two sparse random projections (Li, Hastie & Church 2006 "very sparse" matrices from scikit-learn), a
Kronecker-structured Johnson-Lindenstrauss map (Jin, Kolda & Ward 2019) that only needs the (T, d)
products g S_v^T and h S_h^T.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from actors.sft_data import IGNORE_INDEX, collate, completion_nll, tokenize_examples


def reference_nll(model, tokenizer, table: pa.Table, use_chat_template: bool, max_prompt_tokens: int,
                  max_seq_len: int, device: str) -> list[float]:
    """Mean NLL (nats/token) of each completion given its prompt, teacher-forced.

    table: TRAIN_EXAMPLES rows (n). Returns n floats, in row order (0.0 for an example whose completion
    was truncated away entirely).
    """
    examples = tokenize_examples(table, tokenizer, use_chat_template, max_prompt_tokens, max_seq_len)
    out = []
    for example in examples:  # one example per forward: no padding, so no dependence on batching
        batch = {k: v.to(device) for k, v in collate([example], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = completion_nll(logits, batch["labels"])
        out.append(float(total / count) if count > 0 else 0.0)
    return out


def sparse_projection(n_features: int, dim: int, seed: int) -> torch.Tensor:
    """(dim, n_features) very sparse random projection matrix (scikit-learn), as a dense float32 tensor
    (dim x vocab floats: small for dim <= 64)."""
    from sklearn.random_projection import SparseRandomProjection

    proj = SparseRandomProjection(n_components=dim, dense_output=False, random_state=seed)
    proj.fit(np.zeros((1, n_features), dtype=np.float32))
    return torch.from_numpy(proj.components_.toarray().astype(np.float32))


def gradient_embeddings(model, tokenizer, table: pa.Table, use_chat_template: bool, max_prompt_tokens: int,
                        max_seq_len: int, dim: int, seed: int, device: str) -> np.ndarray:
    """(n, dim * dim) sketched last-layer gradient embeddings of the mean NLL of each completion.

    table: TRAIN_EXAMPLES rows (n) whose completion is the student's own answer. One forward pass per
    example; no backward pass (the output-layer gradient is analytic). The projections are fixed by
    `seed`, so embeddings of one call are comparable with each other.
    """
    examples = tokenize_examples(table, tokenizer, use_chat_template, max_prompt_tokens, max_seq_len)
    s_vocab = s_hidden = None
    rows = []
    for example in examples:
        batch = {k: v.to(device) for k, v in collate([example], tokenizer.pad_token_id).items()}
        logits, hidden = _logits_and_head_input(model, batch)
        logits, hidden = logits[0, :-1].float(), hidden[0, :-1].float()
        targets = batch["labels"][0, 1:]
        keep = targets != IGNORE_INDEX
        if s_vocab is None:
            s_vocab = sparse_projection(logits.shape[-1], dim, seed).to(device)
            s_hidden = sparse_projection(hidden.shape[-1], dim, seed + 1).to(device)
        if not keep.any():
            rows.append(np.zeros(dim * dim, dtype=np.float32))
            continue
        g = torch.softmax(logits[keep], dim=-1)
        g[torch.arange(g.shape[0]), targets[keep]] -= 1.0  # d(mean NLL)/d(logits) up to the 1/T below
        sketch = (g @ s_vocab.T).T @ (hidden[keep] @ s_hidden.T) / g.shape[0]  # (dim, dim)
        rows.append(sketch.flatten().cpu().numpy())
    return np.stack(rows) if rows else np.zeros((0, dim * dim), dtype=np.float32)


def _logits_and_head_input(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, L, V) and the exact input of the output layer (1, L, H), caught by a hook (a model's
    `hidden_states[-1]` may or may not include the final norm)."""
    seen = {}
    head = model.get_output_embeddings()
    def catch(module, args, output):  # returns None: a hook's return value would replace the logits
        seen["h"] = args[0]

    handle = head.register_forward_hook(catch)
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        handle.remove()
    return logits, seen["h"]
