"""PyTorch peers for `versifier bench` on a GPU: transformers `generate`, eager and
with a static cache + torch.compile (CUDA graphs), on the same checkpoint and
with the same sampling settings as our bench (temperature 0.8, top-k 40, top-p
0.95, repetition penalty 1.1), 16-token prompt. Decode tokens/s exclude the
prompt pass: (time for N new tokens - time for 1) over N - 1 steps, best of 3
after warm-up. Prints one JSON object; a peer that fails is recorded, not fatal.

    python3 pytorch_gpu_peers.py MODEL_DIR --dtypes float32,float16 --batches 1,8 --new-tokens 128 [--out F]
"""
import argparse
import json
import time
import traceback

import torch
from transformers import GPT2LMHeadModel


def timed_generate(m, ids, n, **kw):
    torch.cuda.synchronize()
    t = time.perf_counter()
    m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
               do_sample=True, temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1,
               pad_token_id=0, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def decode_rate(m, b, prompt, n, reps, **kw):
    ids = torch.arange(prompt, device="cuda").unsqueeze(0).repeat(b, 1)
    for _ in range(2):  # warm-up (compiles for the static-cache peer)
        timed_generate(m, ids, n, **kw)
        timed_generate(m, ids, 1, **kw)
    best = 0.0
    first = []
    for _ in range(reps):
        t1 = timed_generate(m, ids, 1, **kw)
        tn = timed_generate(m, ids, n, **kw)
        first.append(t1 * 1000)
        best = max(best, (n - 1) * b / max(tn - t1, 1e-9))
    return {"batch": b, "tokens_per_s": best, "first_token_ms": min(first)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="rewrite this JSON file after every peer (a run cut short keeps "
                    "the peers it finished); without it, print the JSON at the end")
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "peers": []}
    try:
        import transformers
        res["transformers"] = transformers.__version__
    except Exception:
        pass
    for dt in a.dtypes.split(","):
        dtype = getattr(torch, dt)
        for peer in ("eager", "static_compiled"):
            entry = {"peer": peer, "dtype": dt, "decode": []}
            try:
                torch.manual_seed(0)
                m = GPT2LMHeadModel.from_pretrained(a.model, dtype=dtype).cuda().eval()
                kw = {}
                if peer == "static_compiled":
                    # transformers compiles the decode step itself when the cache is
                    # static (CompileConfig: fullgraph, mode="reduce-overhead", i.e.
                    # CUDA graphs), after an eager prompt pass that sizes the cache.
                    # Wrapping `forward` by hand instead fails on transformers 5.17
                    # ("accessing tensor output of CUDAGraphs that has been overwritten").
                    from transformers import CompileConfig
                    kw = {"cache_implementation": "static",
                          "compile_config": CompileConfig(fullgraph=True, mode="reduce-overhead")}
                with torch.inference_mode():
                    for b in batches:
                        entry["decode"].append(decode_rate(m, b, a.prompt_tokens, a.new_tokens, a.reps, **kw))
                entry["compiled"] = hasattr(m, "_compiled_call") and m._compiled_call is not None
                del m
                torch.cuda.empty_cache()
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                entry["trace"] = traceback.format_exc()[-2000:]
            res["peers"].append(entry)
            print(json.dumps(entry), flush=True, file=__import__("sys").stderr)
            if a.out:
                with open(a.out + ".part", "w") as f:
                    json.dump(res, f, indent=1)
                __import__("os").replace(a.out + ".part", a.out)
    if not a.out:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
