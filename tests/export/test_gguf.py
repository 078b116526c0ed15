"""GGUF input: a tiny random Llama written with gguf's GGUFWriter compiles, keeps its tied embedding as
one initializer, carries its tokenizer, chat template and quantization into the package, and
generates exactly what transformers generates from the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from tiny_models import save_gguf

pytest.importorskip("gguf")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def gguf_package(tmp_path_factory):
    from trtcompile.compile import compile_package

    root = tmp_path_factory.mktemp("gguf")
    gguf = save_gguf(root / "tiny-llama.Q8_0.gguf")
    compile_package(str(gguf), root / "package")
    return gguf, root / "package"


def lm_head_and_embedding(model: onnx.ModelProto) -> tuple[str, str]:
    """The initializer the embedding Gather reads, and the one under the logits MatMul (through a Transpose)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    matmul = producer["logits"]
    assert matmul.op_type == "MatMul"
    weight = matmul.input[1]
    if weight in producer:
        assert producer[weight].op_type == "Transpose", producer[weight].op_type
        weight = producer[weight].input[0]
    return gather.input[0], weight


def test_tied_embedding_is_one_initializer(gguf_package):
    _, package = gguf_package
    model = onnx.load(str(package / "model.onnx"))
    embedding, lm_head = lm_head_and_embedding(model)
    assert embedding == lm_head
    inits = {i.name: i for i in model.graph.initializer}
    table = numpy_helper.to_array(inits[embedding], base_dir=str(package))
    # No folded (e.g. transposed) copy of the vocabulary matrix anywhere. Same-shaped weights may exist
    # (a joined Q/K/V of the tiny model happens to be [hidden, vocab]): compare values, not shapes.
    copies = [name for name, init in inits.items() if name != embedding and sorted(init.dims) == sorted(table.shape)
              and any(np.array_equal(numpy_helper.to_array(init, base_dir=str(package)), t) for t in (table, table.T))]
    assert copies == []


def test_manifest_records_the_quantized_source_and_tokenizer(gguf_package):
    gguf, package = gguf_package
    manifest = json.loads((package / "manifest.json").read_text())
    weights = manifest["model"]["weights"]
    assert weights["format"] == "gguf" and weights["file_type"] == "Q8_0" and weights["quantized"]
    assert weights["dequantized_to"] == "float32" and weights["tensor_types"]["Q8_0"] == 15
    assert manifest["model"]["source_kind"] == "gguf"
    assert manifest["accuracy"]["passed"]
    assert (package / "tokenizer" / "tokenizer.json").is_file()
    assert "assistant" in (package / "tokenizer" / "chat_template.jinja").read_text()
    assert set(manifest["build"]["peak_rss_mib"]) >= {"load", "export", "optimize", "verify"}


def test_generates_what_transformers_generates_from_the_same_file(gguf_package):
    import torch
    import transformers

    from trtcompile import runtime
    from trtcompile.cli_generate import chat_prompt_ids

    gguf, package = gguf_package
    model = runtime.load(package, backend="onnxruntime")
    ids = chat_prompt_ids(package, model.manifest.data, "hello there")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert ids == hf_tok.apply_chat_template([{"role": "user", "content": "hello there"}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
    ours = np.stack(list(model.stream(np.asarray([ids], np.int64), max_new_tokens=12, stop_tokens=[])), axis=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    with torch.inference_mode():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                           pad_token_id=0)[:, len(ids):]
    np.testing.assert_array_equal(ours, want.numpy())


def test_unreadable_gguf_is_a_user_error(tmp_path):
    from trtcompile.errors import UserError
    from trtcompile.export import load_source

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a readable GGUF file"):
        load_source(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_source(str(tmp_path / "missing.gguf"))


def test_loading_parses_the_file_once(tmp_path):
    # transformers opens the file for the config, the weights and the tokenizer; within parsed_once
    # they share one parsed reader, and gguf's own GGUFReader is back in place afterwards.
    import gguf as gguf_package

    from trtcompile.export.gguf import parsed_once

    path = save_gguf(tmp_path / "tiny.gguf")
    other = save_gguf(tmp_path / "other.gguf")
    original = gguf_package.GGUFReader
    with parsed_once(path):
        first, second = gguf_package.GGUFReader(str(path)), gguf_package.GGUFReader(path)
        assert first is second and isinstance(first, original)
        assert gguf_package.GGUFReader(str(other)) is not first  # another file is read as usual
        assert gguf_package.get_tensor_name_map(gguf_package.MODEL_ARCH.LLAMA, 2) is \
            gguf_package.get_tensor_name_map(gguf_package.MODEL_ARCH.LLAMA, 2)
    assert gguf_package.GGUFReader is original
    assert gguf_package.GGUFReader(str(path)) is not first
