"""PyTorch + transformers baseline for `versifier bench --synthetic gpt2-124m`.

Random GPT-2 124M weights (the real shape), 16-token prompt, greedy decoding with
the KV cache, the same thread count as ours. Prints one JSON object.

    python3 pytorch_baseline.py --threads 2 --new-tokens 64 --dtype float32
"""
import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    m = GPT2LMHeadModel(GPT2Config()).to(dtype).eval()
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": a.dtype, "decode": []}
    for b in [int(x) for x in a.batches.split(",")]:
        ids = torch.arange(a.prompt_tokens).unsqueeze(0).repeat(b, 1)
        with torch.inference_mode():
            best = 0.0
            for _ in range(2):  # the first round warms up
                t0 = time.perf_counter()
                out = m(ids, use_cache=True)
                first_ms = (time.perf_counter() - t0) * 1000
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                t = time.perf_counter()
                for _ in range(a.new_tokens):
                    out = m(nxt, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    nxt = out.logits[:, -1:].argmax(-1)
                steps = a.new_tokens / (time.perf_counter() - t)
                best = max(best, steps)
        res["decode"].append({"batch": b, "tokens_per_s": best * b, "first_token_ms": first_ms})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
