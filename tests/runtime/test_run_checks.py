"""What `run` and `generate` check before a backend sees a call, and how a backend failure reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trtcompile import runtime

VOCAB = 128  # tests/tiny_models.py


def feeds(batch=2, seq=8, **override):
    f = {"input_ids": np.ones((batch, seq), np.int64), "attention_mask": np.ones((batch, seq), np.int64),
         "token_type_ids": np.zeros((batch, seq), np.int64)}
    f.update(override)
    return f


@pytest.fixture(scope="module")
def bert(tiny_bert_package):
    with runtime.load(tiny_bert_package, backend="onnxruntime") as model:
        yield model


@pytest.mark.parametrize("name, value, message", [
    ("input_ids", -1, r"input 'input_ids' holds -1 at index \[1, 3\], outside its range 0..127; token ids"),
    ("input_ids", VOCAB, r"input 'input_ids' holds 128 at index \[1, 3\], outside its range 0..127"),
    ("token_type_ids", 2, r"input 'token_type_ids' holds 2 at index \[1, 3\], outside its range 0..1"),
])
def test_values_outside_the_manifest_range_are_input_errors(bert, name, value, message):
    f = feeds()
    f[name][1, 3] = value
    with pytest.raises(runtime.InputError, match=message):
        bert.run(f)


def test_a_closed_model_says_so(tiny_bert_package):
    model = runtime.load(tiny_bert_package, backend="onnxruntime")
    model.run(feeds())
    model.close()
    model.close()  # twice is fine
    for use in (lambda: model.run(feeds()), lambda: model.generate(np.ones((1, 4), np.int64))):
        with pytest.raises(runtime.ModelClosedError, match=r"was closed; load the package again"):
            use()


def test_backend_failure_names_bucket_shapes_and_cause(tiny_bert_package, tmp_path):
    """A bucket edited past the model's 128 positions: the call fits the manifest, ORT fails."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_bert_package, pkg)
    data = json.loads((pkg / "manifest.json").read_text())
    long = next(b for b in data["buckets"] if b["name"] == "long")
    long["dims"]["sequence"] = [17, 32, 300]
    (pkg / "manifest.json").write_text(json.dumps(data))
    with runtime.load(pkg, backend="onnxruntime") as model:
        with pytest.raises(runtime.RunError, match=r"backend 'onnxruntime' failed in bucket 'long' \(batch 1..4, "
                                                   r"sequence 17..300\) on input_ids \[1, 200\].*"
                                                   r"a bucket reaches beyond what the model supports") as err:
            model.run(feeds(batch=1, seq=200))
    assert isinstance(err.value, runtime.PackageError)  # the CLI reports it like any package problem


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from decoder_packages import compiled_decoder

    with runtime.load(compiled_decoder("llama", tmp_path_factory.mktemp("decoders")), backend="onnxruntime") as m:
        yield m


@pytest.mark.parametrize("options, message", [
    ({"stop_tokens": "520"}, r"stop_tokens='520' \(str\); pass a list of token ids"),
    ({"stop_tokens": [1.5]}, r"stop_tokens\[0\] is 1.5 \(float\); pass an integer token id"),
    ({"stop_tokens": [VOCAB]}, r"stop_tokens\[0\] is 128, outside this model's vocabulary 0..127"),
    ({"pad_token_id": -1}, r"pad_token_id is -1, outside this model's vocabulary 0..127"),
    ({"pad_token_id": VOCAB}, r"pad_token_id is 128, outside"),
    ({"max_new_tokens": None}, r"max_new_tokens=None; pass an integer >= 1"),
    ({"max_new_tokens": 0}, r"max_new_tokens=0; pass an integer >= 1"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens=2.5; pass an integer >= 1"),
    ({"seed": "x"}, r"seed='x'; pass an integer"),
    ({"input_ids": [[5, -1, 7]]}, r"input_ids holds token id -1, outside this model's vocabulary 0..127"),
    ({"input_ids": [[5, VOCAB, 7]]}, r"input_ids holds token id 128, outside"),
])
def test_generate_options_are_checked(llama, options, message):
    args = {"input_ids": [[5, 6, 7]], "max_new_tokens": 3, **options}
    for call in (llama.generate, lambda **a: next(iter(llama.stream(**a)))):
        with pytest.raises(runtime.InputError, match=message):
            call(**args)


def test_a_single_stop_token_may_be_an_int(llama):
    ids = np.asarray([[5, 6, 7]], np.int64)
    free = llama.generate(ids, max_new_tokens=4, stop_tokens=[])
    first = int(free[0, 3])
    assert llama.generate(ids, max_new_tokens=4, stop_tokens=first).tolist() == \
        llama.generate(ids, max_new_tokens=4, stop_tokens=[first]).tolist() == free[:, :4].tolist()
