"""generate()/stream() on compiled tiny causal LMs: token for token against HF `generate`.

Static-cache packages (the default) run through the continuous-batching scheduler; one concat
package keeps today's single-request loop covered.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from decoder_packages import compiled_decoder, hf_model
from trtcompile import runtime
from trtcompile.runtime.generate import HostKVCache, Sampling, choose_tokens
from trtcompile.runtime.manifest import PackageError
from trtcompile.runtime.shapes import InputError

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {family: compiled_decoder(family, root) for family in ("gpt2", "llama")}


def prompts(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts of 9, 5 and 2 tokens (pad id 0)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 128, size=(3, 9)).astype(np.int64)
    mask = (np.arange(9)[None] >= np.array([[0], [4], [7]])).astype(np.int64)
    ids[mask == 0] = 0
    return ids[:batch], mask[:batch]


def hf_generate(family: str, ids, mask, **kwargs) -> np.ndarray:
    model = hf_model(family)
    pad = model.generation_config.pad_token_id
    kwargs.setdefault("pad_token_id", 2 if pad is None else pad)  # HF pads with eos when there is no pad id
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)
    return out.numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_matches_hf_generate_token_for_token(packages, family, batch):
    ids, mask = prompts(batch)
    expected = hf_generate(family, ids, mask)
    with runtime.load(packages[family], backend="onnxruntime", threads=1) as model:
        got = model.generate(ids, mask, max_new_tokens=NEW_TOKENS)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])  # MQA (1 KV head) and Qwen2's biased QKV
def test_greedy_matches_hf_for_more_families(tmp_path_factory, family):
    package = compiled_decoder(family, tmp_path_factory.mktemp("decoders"))
    ids, mask = prompts(3)
    expected = hf_generate(family, ids, mask)
    with runtime.load(package, backend="onnxruntime", threads=1) as model:
        np.testing.assert_array_equal(model.generate(ids[:1], mask[:1], max_new_tokens=NEW_TOKENS),
                                      hf_generate(family, ids[:1], mask[:1]))
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=NEW_TOKENS), expected)


def test_concat_cache_package_matches_hf(tmp_path_factory):
    package = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache="concat")
    ids, mask = prompts(3)
    with runtime.load(package, backend="onnxruntime", threads=1) as model:
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=NEW_TOKENS), hf_generate("llama", ids, mask))


def test_stop_tokens_end_each_sequence_like_hf(packages):
    ids, mask = prompts(3)
    greedy = hf_generate("llama", ids, mask)
    stop = int(greedy[1, 9 + 5])  # a token the second sequence emits as its 6th
    expected = hf_generate("llama", ids, mask, eos_token_id=stop, pad_token_id=0)
    with runtime.load(packages["llama"], backend="onnxruntime", threads=1) as model:
        got = model.generate(ids, mask, max_new_tokens=NEW_TOKENS, stop_tokens=[stop], pad_token_id=0)
    np.testing.assert_array_equal(got, expected)
    new = got[1, 9:]
    first = int(np.argmax(new == stop))
    assert first <= 5 and (new[first + 1:] == 0).all()


def test_stream_yields_one_token_per_sequence_per_step(packages):
    ids, mask = prompts(3)
    with runtime.load(packages["gpt2"], backend="onnxruntime", threads=1) as model:
        steps = list(model.stream(ids, mask, max_new_tokens=8, stop_tokens=[]))
        whole = model.generate(ids, mask, max_new_tokens=8, stop_tokens=[])
    assert len(steps) == 8 and all(s.shape == (3,) and s.dtype == np.int64 for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), whole[:, 9:])


def test_sampling_is_reproducible_with_a_seed(packages):
    ids, mask = prompts(3)
    opts = dict(max_new_tokens=24, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, stop_tokens=[])
    with runtime.load(packages["llama"], backend="onnxruntime", threads=1) as model:
        a = model.generate(ids, mask, seed=7, **opts)
        b = model.generate(ids, mask, seed=7, **opts)
        c = model.generate(ids, mask, seed=8, **opts)
        greedy = model.generate(ids, mask, max_new_tokens=24, stop_tokens=[])
        top1 = model.generate(ids, mask, seed=3, **{**opts, "top_k": 1})
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(top1, greedy)  # top-k 1 is greedy whatever the seed


def test_choose_tokens_respects_top_k_and_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000, np.float32))
    rng = np.random.default_rng(0)
    assert set(choose_tokens(logits, Sampling(True, 1.0, 2, 1.0), rng)) == {0, 1}
    assert set(choose_tokens(logits, Sampling(True, 1.0, 0, 0.8), rng)) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    assert set(choose_tokens(logits, Sampling(True, 1.0, 0, 0.5), rng)) == {0}
    counts = np.bincount(choose_tokens(logits, Sampling(True, 1.0, 0, 1.0), rng), minlength=4) / 2000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)
    np.testing.assert_array_equal(choose_tokens(logits[:3], Sampling(), None), [0, 0, 0])


def test_over_long_requests_name_the_numbers_and_the_cache(packages):
    # The tiny models have 256 positions: the static cache holds 256 per sequence.
    with runtime.load(packages["gpt2"], backend="onnxruntime") as model:
        ids = np.full((1, 200), 5, np.int64)
        with pytest.raises(InputError, match=r"prompt of 200 tokens \+ max_new_tokens 100 needs a context of 299, "
                                             r"but this package's KV cache holds 256 .*at most 57 new tokens"):
            model.generate(ids, max_new_tokens=100)
        with pytest.raises(InputError, match=r"prompt of 300 tokens .* holds 256 .*shorten the prompt"):
            model.generate(np.full((1, 300), 5, np.int64), max_new_tokens=1)
        with pytest.raises(InputError, match=r"token id 128, outside this model's vocabulary 0\.\.127"):
            model.generate(np.array([[5, 128]]), max_new_tokens=2)
        with pytest.raises(InputError, match="left-padded"):
            model.generate(np.full((1, 4), 5, np.int64), np.array([[1, 1, 0, 0]]), max_new_tokens=2)
        with pytest.raises(InputError, match="temperature=0.0 must be > 0"):
            model.generate(ids[:, :4], max_new_tokens=2, do_sample=True, temperature=0.0)
        with pytest.raises(InputError, match="max_new_tokens=0"):
            model.generate(ids[:, :4], max_new_tokens=0)
        # The most that fits; a prompt beyond the prefill bucket (256 here) would be chunked.
        assert model.generate(ids, max_new_tokens=57, stop_tokens=[]).shape == (1, 257)
        assert model.generate(np.full((5, 4), 5, np.int64), max_new_tokens=2).shape == (5, 6)  # batch 5: 5 slots


def test_concat_requests_name_the_numbers_and_buckets(tmp_path_factory):
    package = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache="concat")
    with runtime.load(package, backend="onnxruntime") as model:
        ids = np.full((1, 200), 5, np.int64)
        with pytest.raises(InputError, match=r"prompt of 200 tokens \+ max_new_tokens 100 needs a context of 299"
                                             r".*past_sequence 256 at batch 1 \(past_sequence decode: 1\.\.255;.*at most 57 new tokens"):
            model.generate(ids, max_new_tokens=100)
        with pytest.raises(InputError, match=r"prompt of 300 tokens .* fits no prefill bucket .*prefill: 1\.\.256"):
            model.generate(np.full((1, 300), 5, np.int64), max_new_tokens=1)
        with pytest.raises(InputError, match=r"batch 5 fits no prefill bucket.*batch prefill: 1\.\.4"):
            model.generate(np.full((5, 4), 5, np.int64), max_new_tokens=2)


def test_cache_buffers_are_reused_and_host_fallback_agrees(tmp_path_factory):
    """The concat form's single-request loop: buffers reused; a second caller waits (or times out)."""
    from trtcompile.runtime.generate import GenerationTimeout

    package = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache="concat")
    ids, mask = prompts(3)
    with runtime.load(package, backend="onnxruntime", threads=1) as model:
        first = model.generate(ids, mask, max_new_tokens=16, stop_tokens=[])
        cache = model._kv_cache
        buffers = [b.ctypes.data for pair in cache.buffers for b in pair]
        model.generate(ids[:, 3:], mask[:, 3:], max_new_tokens=16, stop_tokens=[])  # shorter: same buffers
        assert model._kv_cache is cache and [b.ctypes.data for pair in cache.buffers for b in pair] == buffers
        model.generate(ids[:1], mask[:1], max_new_tokens=30, stop_tokens=[])  # batch 1, longer: still fits
        assert model._kv_cache is cache
        running = model.stream(ids, mask, max_new_tokens=4)
        next(running)
        with pytest.raises(GenerationTimeout, match="held this model for 0.2 s"):
            model.generate(ids, mask, max_new_tokens=2, timeout=0.2)
        running.close()  # an abandoned stream hands the cache back
        # The generic path (any backend through Model.run) gives the same tokens.
        model._kv_cache = HostKVCache(model, cache.layout, cache.per_token, cache.capacity, cache.dtypes)
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=16, stop_tokens=[]), first)


def test_encoder_package_refuses_generate(tmp_path, packages):
    import json
    import shutil

    pkg = tmp_path / "no-generation"
    shutil.copytree(packages["gpt2"], pkg)
    data = json.loads((pkg / "manifest.json").read_text())
    del data["generation"]
    (pkg / "manifest.json").write_text(json.dumps(data))
    with runtime.load(pkg, backend="onnxruntime") as model, pytest.raises(PackageError, match="no 'generation'"):
        model.generate(np.array([[5, 6]]), max_new_tokens=2)


def test_generate_runs_without_torch_onnx_or_transformers(packages):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "transformers", "tokenizers"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from trtcompile import runtime
        model = runtime.load({str(packages["gpt2"])!r}, backend="onnxruntime")
        out = model.generate(np.array([[5, 6, 7]]), max_new_tokens=4, stop_tokens=[])
        assert out.shape == (1, 7), out.shape
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_static_cache_updates_in_place_without_ort_copy_warning(packages):
    """Past and present bound to one buffer: ORT's TensorScatter writes in place and never warns
    "in-place optimization not activated" (which the unbound Model.run path does, as a control)."""
    code = textwrap.dedent(f"""
        import numpy as np
        import onnxruntime as ort
        from trtcompile import runtime
        model = runtime.load({str(packages["llama"])!r}, backend="onnxruntime", threads=1)
        opts = ort.SessionOptions()
        opts.log_severity_level = 1  # warnings and info
        model.backend.session = ort.InferenceSession(str(model.manifest.path("model.onnx")), opts,
                                                     providers=["CPUExecutionProvider"])
        out = model.generate(np.array([[5, 6, 7]]), max_new_tokens=6, stop_tokens=[])
        print("GENERATED", out.shape, flush=True)
        import os
        os.write(2, b"MARK\\n")  # stderr is written unbuffered by ORT too: this splits it in two
        feeds = {{"input_ids": np.array([[5]]), "attention_mask": np.ones((1, 4), np.int64),
                  "position_ids": np.array([[3]]), "cache_position": np.array([3])}}
        for name in model.backend.session.get_inputs():
            if name.name.startswith("past_key_values."):
                feeds[name.name] = np.zeros((1, 2, 256, 16), np.float32)
        model.backend.run(feeds, None)
        print("CONTROL", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "GENERATED (1, 9)" in result.stdout and "CONTROL" in result.stdout, result.stderr[-2000:]
    warning = "in-place optimization not activated"
    during_generate, during_control = result.stderr.split("MARK\n", 1)
    assert warning not in during_generate
    assert during_control.count(warning) == 4  # one per cache tensor of the 2-layer model


def test_fp16_cache_matches_hf_greedy(tmp_path_factory):
    """An FP16 KV cache under FP32 weights: the same greedy tokens as HF's FP32 cache on these prompts,
    and the package was verified at FP16 tolerances (its cache outputs are FP16)."""
    package = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache_dtype="fp16")
    ids, mask = prompts(3)
    with runtime.load(package, backend="onnxruntime", threads=1) as model:
        assert {s.name: s.dtype for s in model.inputs}["past_key_values.0.key"] == "float16"
        assert model.manifest.data["accuracy"]["precision"] == "fp16"
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=NEW_TOKENS), hf_generate("llama", ids, mask))
