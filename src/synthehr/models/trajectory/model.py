"""Decoder-only transformer over trajectory tokens, with a KV cache for batched sampling.

* Embeddings tied through the code hierarchy: the embedding of token i is its own vector plus the sum
  of its hierarchy nodes' vectors (ICD chapter / category, code prefixes, metadata parents), and the
  output layer uses the same matrix, so a rare code shares most of its input and output representation
  with its relatives.
* Rotary position embeddings (relative only: training shifts each window's timeline by a random offset,
  so attention never depends on how far the timeline is from the demographic prefix), plus two "record
  clock" embeddings added to every token — log2 of its position in the record and half-octaves of the
  hours since the first event — so the model knows how far into the record it is (which a window alone
  cannot tell) and can learn when records end; and smooth features of the hours since the current ICU
  and hospital stay began (clock.py), so it knows how long the current stay has lasted; and a memory
  of the distinct codes the record has held so far (memory.py), which no window alone holds.
* Windows are `prefix + a chunk of the timeline` in training; in sampling the KV cache pins the 5 demographic tokens and keeps a ring of timeline slots from which each token
  sees between half and all of a window's worth of recent tokens (see KVCache) — the span the training
  windows cover — so long records never outgrow the cache and never leave the trained range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthehr.models.trajectory.clock import N_STAY_FEATURES, stay_features
from synthehr.models.trajectory.memory import SeenInput, batch_seen_codes, window_memory, window_seen

N_POS_BUCKETS = 20    # log2 of the position in the record
N_TIME_BUCKETS = 40   # half-octaves of the hours elapsed since the first event
N_STAY_BUCKETS = N_TIME_BUCKETS + 1  # the novel bias's rows: no stay open, then half-octaves of the stay clock
N_LEFT_BUCKETS = 41   # half-octaves of the tokens a record has left (the length budget): up to 2^20


def pos_bucket(pos: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.floor(torch.log2(pos.double() + 1)).long(), 0, N_POS_BUCKETS - 1)


def _half_octaves(x: torch.Tensor, n: int) -> torch.Tensor:
    """floor(2 log2 x) for x >= 1, clamped to buckets 0..n-1."""
    return torch.clamp(torch.floor(2 * torch.log2(x)).long(), 0, n - 1)


def time_bucket(hours: torch.Tensor) -> torch.Tensor:
    return _half_octaves(hours.double().clamp(min=0) + 1, N_TIME_BUCKETS)


def left_bucket(left: torch.Tensor) -> torch.Tensor:
    """Tokens the record holds after this one (>= 1; less counts as 1: "end now") → half-octave bucket."""
    return _half_octaves(left.double().clamp(min=1), N_LEFT_BUCKETS)


def stay_bucket(stay: torch.Tensor) -> torch.Tensor:
    """(..., 2) stay clocks (hours since the open ICU / hospital stay began, -1 when closed) → (...) long:
    0 when no stay is open, else 1 + the half-octave of the outermost open stay's clock (the larger one)."""
    outer = stay.max(dim=-1).values
    return torch.where(outer >= 0, 1 + time_bucket(outer), torch.zeros_like(outer, dtype=torch.long))


class Rotary:
    def __init__(self, head_dim: int, base: float = 10000.0):
        self.inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))

    def rotation(self, pos: torch.Tensor) -> torch.Tensor:
        """pos (B, T) → unit complex rotations (B, T, 1, head_dim/2), complex64 (angles in float64 for
        large positions)."""
        ang = pos.double().unsqueeze(-1) * self.inv_freq
        return torch.polar(torch.ones_like(ang), ang).to(torch.complex64).unsqueeze(2)


def apply_rotary(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, dh) with the pairs (x[2i], x[2i+1]) rotated by rot (B, T, 1, dh/2): one complex
    multiply — the same arithmetic as x1 cos - x2 sin, x1 sin + x2 cos, about 5x faster than doing it on
    the halves and stacking them (it runs for every layer at every sampling step)."""
    B, T, n, dh = x.shape
    return torch.view_as_real(torch.view_as_complex(x.reshape(B, T, n, dh // 2, 2)) * rot).flatten(-2)


class Block(nn.Module):
    """Pre-norm transformer block.  With kv_heads < n_heads, groups of query heads share one key/value
    head (grouped-query attention): the sampler's KV cache, whose reading bounds generation speed,
    shrinks by n_heads / kv_heads."""

    def __init__(self, d: int, n_heads: int, dropout: float, kv_heads: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.kv_heads = kv_heads or n_heads
        self.dh = d // n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, d + 2 * self.kv_heads * self.dh, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def _qkv(self, x, rot):
        B, T, d = x.shape
        H, G, dh = self.n_heads, self.kv_heads, self.dh
        qkv = self.qkv(self.ln1(x))
        qk = apply_rotary(qkv[..., :d + G * dh].view(B, T, H + G, dh), rot)  # queries and keys in one multiply
        v = qkv[..., d + G * dh:].view(B, T, G, dh)
        return qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2), v.transpose(1, 2)

    def _rest(self, x, att):
        B, H, T, dh = att.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, T, H * dh)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))

    def forward(self, x, rot, mask):
        q, k, v = self._qkv(x, rot)
        if self.kv_heads != self.n_heads:
            r = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._rest(x, att)

    def step(self, x, rot, cache_k, cache_v, slot, bias):
        """x (B, 1, d); writes this token's key/value at `slot` (B,) then attends over the cache, with
        `bias` (B, 1, 1, S) = 0 on visible slots and -inf elsewhere."""
        q, k, v = self._qkv(x, rot)
        B, H, G, dh = x.shape[0], self.n_heads, self.kv_heads, self.dh
        # keys are cached transposed (B, G, dh, S) so q @ K^T reads them contiguously: through a strided
        # view the step took ~25% longer
        rows = torch.arange(B)
        cache_k[rows, :, :, slot] = k[:, :, 0]
        cache_v[rows, :, slot] = v[:, :, 0]
        # one query per row: plain matmuls beat scaled_dot_product_attention's masked CPU path ~2x here,
        # and this step is bound by reading the cache; the query heads of a group share one matmul
        qg = q.reshape(B, G, H // G, dh) * (dh ** -0.5)  # scale the query, not the (B, H, S) scores
        s = torch.matmul(qg, cache_k).add_(bias)
        att = torch.matmul(torch.softmax(s, dim=-1), cache_v)
        return self._rest(x, att.reshape(B, H, 1, self.dh))


@dataclass
class KVCache:
    """Per layer keys (B, kv_heads, dh, S) and values (B, kv_heads, S, dh), S = prefix + 2*half slots: the
    demographic prefix pinned, then a ring of 2*half timeline slots.  The token at timeline index j attends to the prefix and to timeline indices
    [max(0, (j // half - 1) * half), j]: between half + 1 and 2*half tokens once past the start, the
    range the training windows cover (see data.make_windows), and never more than a window holds."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    body_idx: torch.Tensor      # (B, S) timeline index held by each slot (-1 empty); prefix slots: 0
    written: torch.Tensor       # (B, S) bool
    prefix: int
    half: int

    def slot(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.prefix, pos, self.prefix + (pos - self.prefix) % (2 * self.half))

    def visible(self, pos: torch.Tensor) -> torch.Tensor:
        j = pos - self.prefix
        start = torch.clamp((torch.div(j, self.half, rounding_mode="floor") - 1) * self.half, min=0)
        is_prefix_slot = torch.arange(self.written.shape[1]) < self.prefix
        return self.written & (is_prefix_slot[None, :] | (self.body_idx >= start[:, None]))

    def reset_rows(self, rows) -> None:
        self.written[rows] = False
        self.body_idx[rows] = -1

    def keep_rows(self, rows: torch.Tensor) -> "KVCache":
        return KVCache([k[rows] for k in self.k], [v[rows] for v in self.v], self.body_idx[rows], self.written[rows],
                       self.prefix, self.half)


class TrajectoryTransformer(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                 n_nodes: int = 0, h_tok: np.ndarray | None = None, h_node: np.ndarray | None = None,
                 dropout: float = 0.0, stay_clock: bool = True, seen_memory: bool = True, kv_heads: int | None = None,
                 seen_embedding: str = "tied", seen_bias: bool = False, novel_bias: bool = False,
                 length_budget: bool = False):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even size")
        if kv_heads is not None and (kv_heads < 1 or n_heads % kv_heads):
            raise ValueError(f"kv_heads {kv_heads} must divide n_heads {n_heads}")
        self.vocab_size, self.d_model, self.n_heads = vocab_size, d_model, n_heads
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.n_nodes = int(n_nodes)
        if self.n_nodes:
            self.node_emb = nn.Embedding(self.n_nodes, d_model)
            self.register_buffer("h_tok", torch.as_tensor(h_tok, dtype=torch.long), persistent=False)
            self.register_buffer("h_node", torch.as_tensor(h_node, dtype=torch.long), persistent=False)
        self.pos_emb = nn.Embedding(N_POS_BUCKETS, d_model)
        self.time_emb = nn.Embedding(N_TIME_BUCKETS, d_model)
        self.kv_heads = kv_heads or n_heads
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, kv_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        self.rotary = Rotary(d_model // n_heads)
        self.drop = nn.Dropout(dropout)
        self.apply(self._init)
        if self.n_nodes:
            # a token's vector = own + sum of its nodes: start the nodes small so the sum stays O(1)
            nn.init.normal_(self.node_emb.weight, std=0.02 / math.sqrt(max(np.bincount(h_tok).max(), 1)) if len(h_tok) else 0.02)
        for b in self.blocks:
            nn.init.normal_(b.proj.weight, std=0.02 / math.sqrt(2 * n_layers))
            nn.init.normal_(b.fc2.weight, std=0.02 / math.sqrt(2 * n_layers))
        # hours since the current ICU / hospital stay began, as smooth features (clock.py).  Made last, so
        # every other parameter starts as it would without it: a record with no stay sees the same model.
        self.stay_proj = nn.Linear(N_STAY_FEATURES, d_model, bias=False) if stay_clock else None
        if self.stay_proj is not None:
            nn.init.normal_(self.stay_proj.weight, std=0.02)
        # the codes the record has held so far (memory.py); made after the clock for the same reason
        self.seen_proj = nn.Linear(d_model, d_model, bias=False) if seen_memory else None
        if self.seen_proj is not None:
            nn.init.normal_(self.seen_proj.weight, std=0.02)
        # "own": the memory sums vectors of a table of its own rather than the tied token embeddings, which
        # are shaped for predicting the next token, not for telling which codes a record has held
        self.seen_emb = nn.Embedding(vocab_size, d_model) if seen_memory and seen_embedding == "own" else None
        if self.seen_emb is not None:
            nn.init.normal_(self.seen_emb.weight, std=0.02)
        # seen_bias: a learned logit offset per code, added while the record has already held that code — a
        # direct path for "a patient who has had one troponin gets more, one who has had none rarely starts"
        if seen_bias and not seen_memory:
            raise ValueError("seen_bias needs seen_memory")
        self.seen_bias = nn.Parameter(torch.zeros(vocab_size)) if seen_bias else None
        # novel_bias: a learned logit offset per (stay-clock bucket, token) for the tokens the record has NOT
        # held yet — a hazard table for starting a code.  Why: in real ICU stays the codes a patient gets
        # start early (90% of PhysioNet RespRate series within 2.6 h, MechVent within 12 h), and the
        # network alone, which sees "late" and "not yet seen" only through one hidden vector, kept starting
        # them at a steady rate, so late first occurrences inflated event probabilities (issue 6).  For
        # tokens that are never "seen" (time gaps, value bins, [EOS]) it is a stay-time-dependent output bias.
        if novel_bias and not seen_bias:
            raise ValueError("novel_bias needs seen_bias")
        self.novel_bias = nn.Parameter(torch.zeros(N_STAY_BUCKETS, vocab_size)) if novel_bias else None
        # length_budget: an embedding of how many tokens the record has left, added to every token.  Training
        # reads it off the real record; sampling draws each record's length from the training lengths first
        # and counts down.  Why: a record's length decides much of what it holds (every code's presence),
        # and a model that must decide when to stop from its hidden state alone drifts (MIMIC-IV demo:
        # median 9,632 tokens against 4,572 real); this factors p(record) = p(length) p(record | length).
        # Off by default: it helped the demo (held-out R2 0.45 / 0.38 against 0.28 / 0.40 for two seeds) but
        # hurt PhysioNet, whose records end with a 48 h window that a token count fights (R2 0.957 vs 0.982).
        # Made last, so every other parameter starts as it would without it.
        self.left_emb = nn.Embedding(N_LEFT_BUCKETS, d_model) if length_budget else None
        if self.left_emb is not None:
            nn.init.normal_(self.left_emb.weight, std=0.02)
        self._frozen_emb: torch.Tensor | None = None

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embedding_matrix(self) -> torch.Tensor:
        if self._frozen_emb is not None:
            return self._frozen_emb
        w = self.tok_emb.weight
        if self.n_nodes:
            w = w.index_add(0, self.h_tok, self.node_emb.weight[self.h_node])
        return w

    def freeze_embeddings(self) -> None:
        """For sampling: compute the tied matrix once (call `unfreeze_embeddings` before training again)."""
        with torch.no_grad():
            self._frozen_emb = None
            self._frozen_emb = self.embedding_matrix().detach().clone()

    def memory_matrix(self, E: torch.Tensor) -> torch.Tensor:
        """The code vectors the seen-codes memory sums: its own table, or the tied embeddings E."""
        return self.seen_emb.weight if self.seen_emb is not None else E

    def unfreeze_embeddings(self) -> None:
        self._frozen_emb = None

    def _clock(self, rec_pos: torch.Tensor, hours: torch.Tensor | None, stay: torch.Tensor | None,
               left: torch.Tensor | None = None) -> torch.Tensor:
        c = self.pos_emb(pos_bucket(rec_pos))
        if self.left_emb is not None:
            if left is None:
                raise ValueError("this model has a length budget: pass `left` (tokens the record has left)")
            c = c + self.left_emb(left_bucket(left))
        if hours is not None:
            c = c + self.time_emb(time_bucket(hours))
        if stay is not None and self.stay_proj is not None:
            c = c + self.stay_proj(stay_features(stay))
        return c

    def hidden(self, tokens: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, rec_pos: torch.Tensor | None = None,
               hours: torch.Tensor | None = None, stay: torch.Tensor | None = None,
               seen: SeenInput | None = None, left: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: rotary positions; rec_pos: true positions in the record (default pos); hours, stay: clocks;
        seen: what the seen-codes memory needs (memory.py); left: tokens the record holds after each one
        (with a length budget)."""
        E = self.embedding_matrix()
        x = F.embedding(tokens, E) + self._clock(pos if rec_pos is None else rec_pos, hours, stay, left)
        if seen is not None and self.seen_proj is not None:
            x = x + self.seen_proj(window_memory(self.memory_matrix(E), tokens, seen))
        x = self.drop(x)
        rot = self.rotary.rotation(pos)
        for b in self.blocks:
            x = b(x, rot, mask)
        return self.ln_f(x), E

    def logits_of(self, h: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
        return h @ E.t() + self.out_bias

    def forward(self, tokens, pos, mask, rec_pos=None, hours=None, stay=None, seen=None, left=None):
        h, E = self.hidden(tokens, pos, mask, rec_pos, hours, stay, seen, left)
        logits = self.logits_of(h, E)
        if self.seen_bias is not None and seen is not None:  # dense over the vocabulary: for small inputs
            codes = torch.arange(self.vocab_size)
            logits = self.seen_offsets(logits, window_seen(tokens, seen, codes), stay)
        return logits

    def seen_offsets(self, logits: torch.Tensor, seen_flags: torch.Tensor, stay: torch.Tensor | None) -> torch.Tensor:
        """Add the seen bias where a token has been held and, with the novel bias, the novel bias of the
        row's stay-clock bucket where it has not.  logits (..., V), seen_flags (..., V) bool, stay (..., 2)."""
        if self.novel_bias is None or stay is None:
            # where() rather than flags * bias: one pass fewer over the (B, V) logits (2.0 vs 2.8 ms at 32k codes)
            return torch.where(seen_flags, logits + self.seen_bias, logits)
        return torch.where(seen_flags, logits + self.seen_bias, logits + self.novel_bias[stay_bucket(stay)])

    def seen_codes_of(self, tokens: torch.Tensor, seen: SeenInput | None):
        """For the chunked training loss: the batch's codes and their seen flags at every position
        (memory.window_seen), or (None, None) without a seen bias."""
        if self.seen_bias is None or seen is None:
            return None, None
        codes = batch_seen_codes(tokens, seen)
        return codes, window_seen(tokens, seen, codes)

    # ------------------------------------------------------------ cached decoding
    def new_cache(self, batch: int, prefix: int, window: int) -> KVCache:
        """`window` = timeline tokens a training window holds (context - prefix)."""
        H, dh = self.kv_heads, self.d_model // self.n_heads
        half = max(1, (window - 1) // 2)
        S = prefix + 2 * half
        return KVCache([torch.zeros(batch, H, dh, S) for _ in self.blocks],
                       [torch.zeros(batch, H, S, dh) for _ in self.blocks],
                       torch.full((batch, S), -1, dtype=torch.long), torch.zeros(batch, S, dtype=torch.bool), prefix, half)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache, hours: torch.Tensor | None = None,
             stay: torch.Tensor | None = None, memory: torch.Tensor | None = None,
             seen_flags: torch.Tensor | None = None, left: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row (B,) at record positions pos (B,), clocks `hours` (B,) and `stay` (B, 2), the
        seen-codes `memory` (B, d) (memory.RunningMemory.vector) and flags `seen_flags` (B, V) bool
        (RunningMemory.seen, for the seen bias), and with a length budget the tokens each row has `left`
        (B,) → next-token logits (B, V)."""
        E = self.embedding_matrix()
        x = F.embedding(tokens, E) + self._clock(pos, hours, stay, left)
        if memory is not None and self.seen_proj is not None:
            x = x + self.seen_proj(memory)
        x = x[:, None, :]
        rot = self.rotary.rotation(pos[:, None])
        slot = cache.slot(pos)
        rows = torch.arange(tokens.shape[0])
        cache.written[rows, slot] = True
        cache.body_idx[rows, slot] = torch.clamp(pos - cache.prefix, min=0)
        bias = torch.zeros(cache.written.shape).masked_fill_(~cache.visible(pos), float("-inf"))[:, None, None, :]
        for b, ck, cv in zip(self.blocks, cache.k, cache.v):
            x = b.step(x, rot, ck, cv, slot, bias)
        logits = self.logits_of(self.ln_f(x[:, 0]), E)
        if self.seen_bias is not None and seen_flags is not None:
            logits = self.seen_offsets(logits, seen_flags, stay)
        return logits
