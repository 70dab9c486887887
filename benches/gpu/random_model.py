#!/usr/bin/env python3
"""A GGUF in the shape of Llama 3 8B (32 layers, 4,096 wide, grouped-query attention 32/8,
14,336-wide feed-forward) with RANDOM Q4_0 weights and the tokenizer of a small model's GGUF,
written without a download: for timing the state-pack loop at a realistic size. Its outputs
are meaningless; only its timings count.

    PYTHONPATH=<llama.cpp>/gguf-py python3 random_model.py SMALL.gguf OUT.gguf

Needs numpy (the GPU host has it with PyTorch). About 4.3 GB written.
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

LAYERS, EMBD, HEADS, KV_HEADS, FFN, CTX = 32, 4096, 32, 8, 14336, 8192
if __import__("os").environ.get("RANDOM_MODEL_TINY"):  # a quick check that it loads
    LAYERS, EMBD, HEADS, KV_HEADS, FFN = 2, 256, 4, 2, 512


def copy_tokenizer(reader, writer):
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        value = field.contents()
        if field.name == "tokenizer.chat_template":
            writer.add_chat_template(value)
        elif isinstance(value, list):
            writer.add_array(field.name, value)
        elif isinstance(value, str):
            writer.add_string(field.name, value)
        elif isinstance(value, bool):
            writer.add_bool(field.name, value)
        elif isinstance(value, int):
            writer.add_uint32(field.name, value)
        else:
            raise SystemExit(f"cannot copy {field.name} ({kind})")
    return len(reader.fields["tokenizer.ggml.tokens"].contents())


def q4_0(rows, cols, rng):
    """Random Q4_0 blocks: an f16 scale and 16 bytes of 4-bit weights per 32 values. The
    scale makes the weights' spread about 0.018, a trained 8B model's, so that activations
    stay finite through 32 layers and decoding runs as it would on real weights."""
    blocks = rows * cols // 32
    data = rng.integers(0, 256, size=(blocks, 18), dtype=np.uint8)
    scale = np.full(blocks, 0.004, dtype=np.float16).view(np.uint8).reshape(blocks, 2)
    data[:, :2] = scale
    return data.reshape(rows, cols // 32 * 18)


def main():
    small, out = sys.argv[1], sys.argv[2]
    reader = GGUFReader(small)
    writer = GGUFWriter(out, "llama")
    writer.add_name("random-weights-llama3-8b-shape")
    vocab = copy_tokenizer(reader, writer)
    writer.add_context_length(CTX)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(EMBD // HEADS)
    writer.add_vocab_size(vocab)
    rng = np.random.default_rng(8)
    q = GGMLQuantizationType.Q4_0
    kv = EMBD // HEADS * KV_HEADS

    def tensor(name, rows, cols):
        writer.add_tensor(name, q4_0(rows, cols, rng), raw_dtype=q)

    tensor("token_embd.weight", vocab, EMBD)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBD, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", EMBD, EMBD)
        tensor(f"blk.{i}.attn_k.weight", kv, EMBD)
        tensor(f"blk.{i}.attn_v.weight", kv, EMBD)
        tensor(f"blk.{i}.attn_output.weight", EMBD, EMBD)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBD, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", FFN, EMBD)
        tensor(f"blk.{i}.ffn_up.weight", FFN, EMBD)
        tensor(f"blk.{i}.ffn_down.weight", EMBD, FFN)
    writer.add_tensor("output_norm.weight", np.ones(EMBD, dtype=np.float32))
    tensor("output.weight", vocab, EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    print(f"wrote {out}: llama3-8b shape, {vocab} tokens, random Q4_0 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
