"""GGUF export on a tiny Llama with a real byte-level BPE tokenizer: the written file, read back with
gguf.GGUFReader, carries llama.cpp's metadata keys, tokens, merges and chat template, and tensors equal to the
transformers weights (q/k in llama.cpp's row order); Q8_0 stays within its quantisation error; the GGUF LoRA and
the Modelfile are written beside it; other architectures and tokenizers are refused with what is supported."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize
from safetensors.numpy import load_file

from core import export_gguf
from core.errors import ExportError
from core.export_gguf import ExportResult, export, main, write_gguf
from core.serve_recipes import CHATML_TEMPLATE, modelfile_text, ollama_template, serve_commands
from tests.lora import make_adapter

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = ["the support bot answers questions about the product", "good movie, bad movie, a great film"] * 20
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="session")
def bpe_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM (GQA: 4 heads, 2 KV heads; rows of 64 so Q8_0 applies) with a byte-level BPE
    tokenizer and SmolLM2's chat template, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(TEXTS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = SMOL_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    with torch.no_grad():  # non-trivial norms, so a swapped or missing norm shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("bpe") / "bpe-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of llama.cpp's q/k permutation, written independently of the exporter's."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str:
    table = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    parts = gguf_name.removesuffix(".weight").split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{table[parts[2]]}.weight"
    return f"{table[parts[0]]}.weight"


def _check_tensors(path: Path, folder: Path, atol: float) -> dict[str, str]:
    """Every GGUF tensor equals its transformers weight (q/k un-permuted) within ``atol``; returns name -> type."""
    hf = load_file(str(folder / "model.safetensors"))
    reader = gguf.GGUFReader(str(path))
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{b}.{n}.weight" for b in range(2) for n in (*MATRICES, "attn_norm", "ffn_norm")
    }
    assert {t.name for t in reader.tensors} == expected  # tied head: no output.weight, llama.cpp reads token_embd
    types = {}
    for t in reader.tensors:
        want = hf[_hf_name(t.name)]
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        if ".attn_q." in t.name:
            got = _unpermute(got, 4)
        elif ".attn_k." in t.name:
            got = _unpermute(got, 2)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=t.name)
        types[t.name] = t.tensor_type.name
    return types


def test_f16_gguf_has_llama_cpp_metadata_tokens_and_the_exact_weights(bpe_llama: Path, tmp_path: Path) -> None:
    out = write_gguf(bpe_llama, tmp_path / "m.gguf", "f16", name="tiny", pre="gpt-2")
    fields = _fields(gguf.GGUFReader(str(out)))
    config = json.loads((bpe_llama / "config.json").read_text())
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    want = {
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.context_length": 512,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": config["vocab_size"],
    }
    assert {k: fields[k] for k in want} == want
    assert fields["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    tokenizer = json.loads((bpe_llama / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)  # in id order
    assert fields["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # the special tokens
    assert set(fields["tokenizer.ggml.token_type"][3:]) == {gguf.TokenType.NORMAL}
    assert len(fields["tokenizer.ggml.merges"]) == len(tokenizer["model"]["merges"])
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.ggml.add_bos_token"] is False  # transformers adds no BOS here; llama.cpp must not
    assert fields["tokenizer.chat_template"] == SMOL_TEMPLATE
    types = _check_tensors(out, bpe_llama, atol=1e-3)
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def test_q8_0_quantises_the_matrices_within_its_block_error(bpe_llama: Path, tmp_path: Path) -> None:
    out = write_gguf(bpe_llama, tmp_path / "m.gguf", "q8_0", pre="gpt-2")
    assert _fields(gguf.GGUFReader(str(out)))["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    types = _check_tensors(out, bpe_llama, atol=0.02)  # weights ~N(0, 0.02): 8-bit blocks keep well inside this
    assert {types[f"blk.1.{m}.weight"] for m in MATRICES} == {"Q8_0"}
    assert types["token_embd.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert out.stat().st_size < 0.6 * write_gguf(bpe_llama, tmp_path / "f.gguf", "f16", pre="gpt-2").stat().st_size


def test_other_architectures_tokenizers_and_types_are_refused_with_what_is_supported(
    bpe_llama: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match=r"supports the Llama family \(LlamaForCausalLM"):
        write_gguf(tiny_models["bert"], tmp_path / "x.gguf")
    with pytest.raises(ExportError, match="byte-level BPE.*WordLevel"):
        write_gguf(tiny_models["llama"], tmp_path / "x.gguf")  # the word-level test tokenizer
    with pytest.raises(ExportError, match="pre-tokenizer.*--tokenizer-pre"):
        write_gguf(bpe_llama, tmp_path / "x.gguf")  # a freshly trained BPE: its hash is nobody's
    with pytest.raises(ExportError, match="'f16' or 'q8_0'"):
        write_gguf(bpe_llama, tmp_path / "x.gguf", "q4_k")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_chatml_becomes_an_ollama_template_with_its_stops_and_default_system() -> None:
    template, stops, default = ollama_template(SMOL_TEMPLATE)
    assert template == CHATML_TEMPLATE and stops == ["<|im_end|>", "<|im_start|>"]
    assert default == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    text = modelfile_text("./m.gguf", SMOL_TEMPLATE, 32768, system="You are Acme's support bot.")
    lines = text.splitlines()
    assert "FROM ./m.gguf" in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER num_ctx 8192" in lines  # capped: Ollama reserves the whole KV cache
    assert 'SYSTEM """You are Acme\'s support bot."""' in lines
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    assert 'SYSTEM """You are a helpful AI' in modelfile_text("./m.gguf", SMOL_TEMPLATE, 2048)  # no profile prompt
    unknown = modelfile_text("./m.gguf", "{{ messages }}", 2048)
    assert "TEMPLATE" not in unknown.replace("# No TEMPLATE", "") and "PARAMETER stop" not in unknown


def test_export_of_a_library_adapter_writes_merged_gguf_lora_and_modelfile(
    bpe_llama: Path, demoforge_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_adapter(bpe_llama, "alpha", 1)
    seen: list[float] = []
    result = export("alpha", "f16", system="Be brief.", pre="gpt-2", on_progress=lambda f, _d: seen.append(f))
    folder = demoforge_home / "exports" / "alpha"
    assert result == ExportResult(folder, [folder / "alpha-f16.gguf", folder / "Modelfile"], "f16")
    assert seen == sorted(seen) and seen[-1] == 1.0
    merged = demoforge_home / "merged" / "alpha"
    _check_tensors(result.files[0], merged, atol=1e-3)  # the merged weights, not the base's
    base = load_file(str(bpe_llama / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"]
    assert (
        np.abs(load_file(str(merged / "model.safetensors"))["model.layers.0.self_attn.v_proj.weight"] - base).max()
        > 0.01
    )
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./alpha-f16.gguf" in modelfile and 'SYSTEM """Be brief."""' in modelfile

    lora = export("alpha", "lora", pre="gpt-2")
    assert [p.name for p in lora.files] == ["base.gguf", "alpha.lora.gguf", "Modelfile"]
    _check_tensors(lora.files[0], bpe_llama, atol=1e-3)  # a non-embedded base is exported as F16 itself
    fields = _fields(gguf.GGUFReader(str(lora.files[1])))
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    names = {t.name for t in gguf.GGUFReader(str(lora.files[1])).tensors}
    assert {f"blk.1.{m}.weight.lora_{ab}" for m in MATRICES for ab in "ab"} <= names
    assert "ADAPTER ./alpha.lora.gguf" in (folder / "Modelfile").read_text()

    assert main(["alpha", "--type", "q8_0", "--tokenizer-pre", "gpt-2"]) == 0
    assert capsys.readouterr().out.split() == [str(folder / "alpha-q8_0.gguf"), str(folder / "Modelfile")]
    assert main(["nope"]) == 2 and "No adapter named 'nope'" in capsys.readouterr().err


def test_serve_commands_name_vllm_llama_cpp_ollama_and_demoforge_without_server_paths(
    bpe_llama: Path, demoforge_home: Path
) -> None:
    make_adapter(bpe_llama, "support-bot", 1)
    text = serve_commands("support-bot")
    assert str(demoforge_home) not in text and str(bpe_llama.parent) not in text
    assert "--enable-lora --lora-modules support-bot=adapters/support-bot" in text
    assert "vllm serve bpe-llama " in text  # a local base outside the home shows by name only
    assert "llama-server -m exports/support-bot/base.gguf --lora exports/support-bot/support-bot.lora.gguf" in text
    assert "export it first" in text  # no GGUF LoRA yet
    assert "curl -s http://127.0.0.1:8000/v1/models  # lists support-bot" in text
    assert "ollama create support-bot -f exports/support-bot/Modelfile" in text
    assert '"lora_name": "support-bot"' in text  # runtime loading on vLLM
    embedded = make_adapter(bpe_llama, "smol", 2, base_spec="default")
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora" in serve_commands("smol")
    assert embedded.is_dir() and export_gguf.SUPPORTED_ARCHITECTURES == ("LlamaForCausalLM",)
